#!/usr/bin/env bash
# The whole pipeline offline, on a generated random-weight checkpoint:
# doctor -> generate -> convert to q8_0 -> inspect -> rerank. The rankings mean nothing
# (the weights are random); the point is that every step runs on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
WORK=${DEMO_DIR:-models/demo}
mkdir -p "$WORK"

# Which of llama.cpp's CPU kernels work here (each checked in a child process).
"$BIN/reranker-cli" doctor

if [ ! -f "$WORK/checkpoint/config.json" ]; then
    "$BIN/python" scripts/make_checkpoint.py "$WORK/checkpoint" --size "${DEMO_SIZE:-tiny}"
fi
"$BIN/reranker-cli" convert "$WORK/checkpoint" --type q8_0 --outfile "$WORK/random-q8_0.gguf" --force
"$BIN/reranker-cli" inspect "$WORK/random-q8_0.gguf"
"$BIN/reranker-cli" rerank --model "$WORK/random-q8_0.gguf" \
    --query "What is the capital of France?" \
    --document "Paris is the capital and largest city of France." \
    --document "Berlin is the capital of Germany." \
    --document "La capitale de la France est Paris." \
    --document "巴黎是法国的首都。" \
    --document "Bananas are rich in potassium."
echo "(random weights: the order above is meaningless; see README for real models)"
