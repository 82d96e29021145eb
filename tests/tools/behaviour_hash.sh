#!/usr/bin/env bash
# Prints hashes of what moe produces for a fixed job: a short training run (metrics, checkpoint,
# config), an eval, a greedy generation, the inspect tables and HTML reports. Refactors that must
# not change behaviour compare this output before and after:
#   tests/tools/behaviour_hash.sh build/moe > before.txt; ...; diff before.txt after.txt
# Wall-clock fields (seconds, tokens per second) and the resident set size (the end line's peak RSS)
# are dropped before hashing; the HTML report is
# hashed for the checked-in metrics fixture, whose timings are fixed.
set -euo pipefail
moe="$(realpath "${1:-build/moe}")"
src="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# JSON (one document or JSON lines) without wall-clock fields, hashed.
json_hash() {
  python3 -c '
import json, sys
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if "second" not in k and not k.endswith("per_s") and not k.endswith("_ms") and k != "peak_rss_kib"}
    if isinstance(v, list): return [strip(x) for x in v]
    return v
text = sys.stdin.read()
try: docs = [json.loads(text)]
except ValueError: docs = [json.loads(l) for l in text.splitlines() if l.strip()]
print(json.dumps([strip(d) for d in docs], sort_keys=True))' | sha256sum | cut -c1-16
}
"$moe" train --config "$src/configs/tiny.json" --out run --steps 12 --eval-every 6 --save-every 6 \
  --eval-tokens 2048 --batch 4 --seq 64 --threads 2 --seed 5 > train.out 2>&1
echo "metrics      $(json_hash < run/metrics.jsonl)"
for f in run/*.safetensors run/config.json run/trainer_state.json; do
  [ -f "$f" ] && echo "$(basename "$f")  $(sha256sum < "$f" | cut -c1-16)"
done
"$moe" data synth --out sample.txt --bytes 20000 --seed 9 > /dev/null
echo "eval         $("$moe" eval --model run --data sample.txt --json --threads 2 | json_hash)"
echo "infer        $("$moe" infer --model run -p 'the king ' -n 60 --temp 0 --seed 1 --threads 2 --json | json_hash)"
echo "infer-sample $("$moe" infer --model run -p 'the king ' -n 60 --seed 3 --threads 2 --json | json_hash)"
echo "inspect-run  $("$moe" inspect run --json | json_hash)"
echo "inspect-cfg  $("$moe" inspect "$src/configs/small.json" | sha256sum | cut -c1-16)"
echo "inspect-text $("$moe" inspect run --text 'the old king' --threads 2 | sha256sum | cut -c1-16)"
"$moe" inspect "$src/tests/fixtures/metrics_small.jsonl" --html report.html > /dev/null
echo "html         $(sha256sum < report.html | cut -c1-16)"
echo "load-table   $("$moe" inspect "$src/tests/fixtures/metrics_small.jsonl" | sha256sum | cut -c1-16)"
