"""The shared core: imported by every entry point (gateway, worker, CLI, model server), importing none of them."""
