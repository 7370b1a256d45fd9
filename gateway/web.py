"""The web pages: / (search by upload or URL, see the result grid; add images; watch jobs) and
/duplicates (review the duplicate groups, change the keeper, resolve)."""
from flask import Blueprint, current_app, render_template

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


@bp.get("/")
def index():
    return render_template("index.html")


@bp.get("/duplicates")
def duplicates():
    return render_template("duplicates.html", token_required=_token_required())


def _token_required() -> bool:
    """Whether reads need a token: the page then waits for one before it asks for groups."""
    settings = current_app.config["SETTINGS"]
    return bool(settings.api_token or settings.read_token)
