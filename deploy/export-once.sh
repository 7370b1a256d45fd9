#!/bin/sh
# export-once vsearch export-model --model M --out DIR --version N [...]
#
# Runs the given export command unless <DIR>/<M>/<N>/ already exists (for each --precision:
# <DIR>/<M>/<N>/ for fp32, <DIR>/<M>_bf16/<N>/ for bf16). The compose and Kubernetes
# one-shot use it: `vsearch export-model` refuses to overwrite a version, and rewriting it with
# --overwrite on every start would make TF Serving reload the same model for nothing. An export is
# published by an atomic rename, so an existing version folder is a complete one. Defaults are the
# CLI's (--model effnet_lite0, --version 1, --out $VSEARCH_MODEL_BASE).
set -eu
[ $# -gt 0 ] || { echo "usage: export-once vsearch export-model [options]" >&2; exit 2; }
model=effnet_lite0
out=${VSEARCH_MODEL_BASE:-var/models}
version=1
overwrite=
precisions=
prev=
for arg in "$@"; do
    case $prev in
        --model) model=$arg ;;
        --out) out=$arg ;;
        --version) version=$arg ;;
        --precision) precisions="$precisions $arg" ;;
    esac
    case $arg in
        --model=*) model=${arg#*=} ;;
        --out=*) out=${arg#*=} ;;
        --version=*) version=${arg#*=} ;;
        --precision=*) precisions="$precisions ${arg#*=}" ;;
        --overwrite) overwrite=1 ;;
    esac
    prev=$arg
done
missing=
for precision in ${precisions:-fp32}; do
    name=$model
    [ "$precision" = bf16 ] && name=${model}_bf16
    [ -d "$out/$name/$version" ] || missing="$missing $out/$name/$version"
done
if [ -z "$overwrite" ] && [ -z "$missing" ]; then
    echo "export-once: every version folder exists, nothing to do"
    exit 0
fi
exec "$@"
