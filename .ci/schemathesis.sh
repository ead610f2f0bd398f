#!/usr/bin/env bash
# Start `tongban demo` on a free loopback port, run schemathesis over /openapi.json as a citizen
# (every operation), then as an operator and as an auditor (the admin API, which a citizen's
# token only ever sees refused), and stop the demo. Fails on any 5xx or any response that
# breaks its own schema.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="$(mktemp -d)"
port="$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
.venv/bin/tongban demo --port "$port" --data-dir "$data_dir" >"$data_dir/demo.log" 2>&1 &
demo_pid=$!
trap 'kill -TERM $demo_pid 2>/dev/null || true; wait $demo_pid 2>/dev/null || true; rm -rf "$data_dir"' EXIT
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && [ -f "$data_dir/demo-staff-tokens.json" ]; then break; fi
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$data_dir/demo.log"; exit 1; }
token_of() {
  .venv/bin/python -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d[sys.argv[2]]; print(v["token"] if isinstance(v, dict) else v)' "$1" "$2"
}
run() {
  local who="$1" token="$2"
  shift 2
  echo "--- schemathesis as $who"
  .venv/bin/schemathesis run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples 40 \
    --seed 20261128 \
    "$@"
}
run citizen "$(token_of "$data_dir/demo-tokens.json" citizen-l3)"
run operator "$(token_of "$data_dir/demo-staff-tokens.json" operator)" --include-path-regex '^/admin/'
run auditor "$(token_of "$data_dir/demo-staff-tokens.json" auditor)" --include-path-regex '^/admin/'
