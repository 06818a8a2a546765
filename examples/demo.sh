#!/bin/sh
# Guard demonstration: guardd enforces a small policy, and an agent launched
# with `guardctl run` tries to delete production data, run a forbidden tool
# and reach a forbidden address. Each attempt is denied by the kernel, and
# guardd prints the records. Run it with `cargo xtask demo`.
set -u
BIN=${GUARD_BIN_DIR:?set GUARD_BIN_DIR to the directory with guardd, guardctl and guard-probe}
WORK=$(mktemp -d /tmp/guard-demo.XXXXXX)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p "$WORK/prod-data/schema" "$WORK/tools"
echo "CREATE TABLE customers (id int);" > "$WORK/prod-data/schema/customers.sql"
echo "42 rows" > "$WORK/prod-data/customers.csv"
cp "$BIN/guard-probe" "$WORK/tools/exfil-tool"

cat > "$WORK/policy.yaml" <<POLICY
profiles:
  - name: cleanup-bot
    mode: enforce
    default: allow
    exec:
      deny:
        - id: no-exfil-tool
          path: $WORK/tools/exfil-tool
          message: this tool uploads data; agents may not run it
    files:
      protect:
        - id: keep-prod-data
          subtree: $WORK/prod-data
          message: production data is never deleted by agents
    network:
      deny:
        - id: no-prod-db
          cidr: 127.0.0.1
          ports: 5432
          message: the production database is off limits to agents
agents:
  - name: demo-agent
    profile: cleanup-bot
POLICY

say "The policy"
cat "$WORK/policy.yaml"

say "Starting guardd"
SOCKET="$WORK/control.sock"
"$BIN/guardd" --policy "$WORK/policy.yaml" --events "$WORK/events.jsonl" --cgroup-root guard-demo --socket "$SOCKET" --state-file "$WORK/state.json" 2> "$WORK/guardd.log" &
GUARDD=$!
enforcing() { grep -q 'INFO.*enforcing:' "$WORK/guardd.log"; }
for _ in $(seq 1 200); do
    enforcing && break
    kill -0 $GUARDD 2>/dev/null || break
    sleep 0.1
done
cat "$WORK/guardd.log"
if ! enforcing; then
    echo "guardd did not start enforcing" >&2
    exit 1
fi

say "The agent, told to 'clean up', runs: rm -rf prod-data; tools/exfil-tool; connect to 127.0.0.1:5432"
cd "$WORK"
"$BIN/guardctl" --socket "$SOCKET" run --agent demo-agent --label ticket=DEMO-1 -- sh -c '
    echo "\$ rm -rf prod-data";           rm -rf prod-data
    echo "\$ ./tools/exfil-tool";         ./tools/exfil-tool
    echo "\$ connect 127.0.0.1:5432";     '"$BIN"'/guard-probe connect-tcp 127.0.0.1:5432
    true'

say "prod-data is intact"
find prod-data -type f | sort

say "guardctl status"
"$BIN/guardctl" --socket "$SOCKET" status

say "Stopping guardd (its programs stay attached until guardd --detach)"
kill -TERM $GUARDD
wait $GUARDD
tail -n 1 "$WORK/guardd.log"
"$BIN/guardd" --detach --cgroup-root guard-demo

say "Denial records of demo-agent (guardd's readiness canary, agent .canary, was denied too before it said enforcing)"
grep '"agent":"demo-agent"' "$WORK/events.jsonl" | grep '"verdict":"deny"'
denials=$(grep '"agent":"demo-agent"' "$WORK/events.jsonl" | grep -c '"verdict":"deny"')
[ -f prod-data/schema/customers.sql ] && [ -f prod-data/customers.csv ] && [ "$denials" -ge 3 ] || { echo "demo: expected intact data and at least 3 denials" >&2; exit 1; }
say "Done: $denials actions denied, nothing destroyed"
