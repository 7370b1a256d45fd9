#!/bin/sh
# sh start.sh [tensorflow_model_server flags...]: TF Serving in bf16 where the CPU has it, else fp32.
#
# Where the CPU has bf16 instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo) it serves the bf16
# variants (models.bf16.config: effnet_lite0_bf16) with --mixed_precision=bfloat16, oneDNN's bf16
# auto-mixed precision (TF Serving 2.15+). TF Serving applies that to every model of the server, so a
# bf16 server serves bf16 names only: vectors of the two precisions never meet under one name
# (services/precision.py). Elsewhere, or with VSEARCH_MODEL_PRECISION=fp32, it serves the fp32 models
# (models.config). Clients with VSEARCH_MODEL_PRECISION=auto embed with whichever is served.
set -eu
dir=$(dirname "$0")
has_bf16() { grep -qwE 'avx512_bf16|amx_bf16' "${CPUINFO:-/proc/cpuinfo}"; }
precision=${VSEARCH_MODEL_PRECISION:-auto}
case $precision in
    auto) if has_bf16; then precision=bf16; else precision=fp32; fi ;;
    bf16) has_bf16 || { echo "start.sh: VSEARCH_MODEL_PRECISION=bf16, but this CPU has no bf16 instructions" >&2; exit 1; } ;;
    fp32) ;;
    *) echo "start.sh: VSEARCH_MODEL_PRECISION must be auto, fp32 or bf16, not $precision" >&2; exit 2 ;;
esac
echo "start.sh: serving in $precision" >&2
if [ "$precision" = bf16 ]; then
    exec tensorflow_model_server --model_config_file="$dir/models.bf16.config" --mixed_precision=bfloat16 "$@"
fi
exec tensorflow_model_server --model_config_file="$dir/models.config" "$@"
