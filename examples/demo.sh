#!/bin/sh
# Guard demonstration. An agent told to "clean up old tables and temp files"
# runs `rm -rf` on a PostgreSQL data directory, mass-deletes its workspace,
# runs a data-upload tool and reaches for the cloud metadata service. The
# kernel refuses what the policy forbids, a budget stops the mass delete,
# and the one deletion the agent really needs (a stale lock file) goes
# through after a human approves its ticket. Run it with `cargo xtask demo`.
set -u
BIN=${GUARD_BIN_DIR:?set GUARD_BIN_DIR to the directory with guardd, guardctl and guard-probe}
WORK=$(mktemp -d /tmp/guard-demo.XXXXXX)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { "$BIN/guardctl" --socket "$WORK/guard.sock" "$@"; }

mkdir -p "$WORK/pgdata/base/16384" "$WORK/pgdata/global" "$WORK/workspace/tmp" "$WORK/tools"
echo 16 > "$WORK/pgdata/PG_VERSION"
echo "4242" > "$WORK/pgdata/postmaster.pid"
echo "customers" > "$WORK/pgdata/base/16384/2613"
echo "orders" > "$WORK/pgdata/base/16384/2619"
echo "control" > "$WORK/pgdata/global/pg_control"
echo "SQLite format 3" > "$WORK/workspace/app.sqlite"
for i in $(seq -w 1 60); do echo "scratch" > "$WORK/workspace/tmp/cache-$i.tmp"; done
cp "$BIN/guard-probe" "$WORK/tools/exfil-tool"

cat > "$WORK/policy.yaml" <<POLICY
profiles:
  - name: cleanup-bot
    default: allow
    exec:
      deny:
        - id: no-exfil-tool
          path: $WORK/tools/exfil-tool
          message: this tool uploads data; agents may not run it
    files:
      protect:
        - id: postgres-data
          subtree: $WORK/pgdata
          message: the database's files are never deleted by agents
        - id: postgres-lock
          name: postmaster.pid
          message: a stale lock file may go, with a human's approval
          approvable: true
        - id: sqlite-files
          name: "*.sqlite"
          message: SQLite databases are never deleted by agents
    budgets:
      destroy: {rate: 10/min, burst: 20}
agents:
  - name: demo-agent
    profile: cleanup-bot
POLICY

say "The policy"
cat "$WORK/policy.yaml"

say "Starting guardd"
"$BIN/guardd" --policy "$WORK/policy.yaml" --events "$WORK/events.jsonl" --cgroup-root guard-demo \
    --socket "$WORK/guard.sock" --state-file "$WORK/state.json" --why-dir "$WORK/why" 2> "$WORK/guardd.log" &
GUARDD=$!
enforcing() { grep -q 'INFO.*enforcing:' "$WORK/guardd.log"; }
for _ in $(seq 1 200); do
    enforcing && break
    kill -0 $GUARDD 2>/dev/null || break
    sleep 0.1
done
grep -E 'enforcing|ERROR' "$WORK/guardd.log"
if ! enforcing; then
    cat "$WORK/guardd.log"
    echo "guardd did not start enforcing" >&2
    exit 1
fi

say "The agent, told to 'clean up old tables and temp files'"
cd "$WORK"
ctl run --agent demo-agent --label task=cleanup-42 -- sh -c '
    ctl() { '"$BIN"'/guardctl --socket '"$WORK"'/guard.sock "$@"; }
    echo "\$ rm -rf pgdata"
    rm -rf pgdata 2>&1 | head -n 3; echo "   (every file refused)"
    echo "\$ rm -f workspace/tmp/* workspace/app.sqlite"
    rm -f workspace/tmp/* workspace/app.sqlite 2>&1 | tail -n 2
    echo "   $(ls workspace/tmp | wc -l) of 60 temp files left"
    echo "\$ ./tools/exfil-tool"
    ./tools/exfil-tool
    echo "\$ connect 169.254.169.254:80 (cloud metadata)"
    '"$BIN"'/guard-probe connect-tcp 169.254.169.254:80
    echo "\$ guardctl why | tail -n 1"
    ctl why | tail -n 1
    echo "\$ guardctl tickets   # this session'"'"'s tickets"
    ctl tickets
    echo "agent: the stale lock file needs a human; retrying until approved"
    touch '"$WORK"'/waiting
    for _ in $(seq 1 120); do
        if rm pgdata/postmaster.pid 2>/dev/null; then
            echo "\$ rm pgdata/postmaster.pid   # removed, with approval"
            exit 0
        fi
        sleep 0.25
    done
    echo "agent: no approval came"; exit 1' &
AGENT=$!

for _ in $(seq 1 600); do
    [ -e "$WORK/waiting" ] && break
    sleep 0.1
done
ticket=""
for _ in $(seq 1 200); do
    ticket=$(ctl tickets | grep postmaster.pid | cut -d ' ' -f 1 | head -n 1)
    [ -n "$ticket" ] && break
    sleep 0.1
done
say "A human looks at the open tickets: guardctl tickets"
ctl tickets
say "and approves that one deletion: guardctl approve $ticket --once"
ctl approve "$ticket" --once
wait $AGENT
agent_status=$?

say "What is left"
find pgdata workspace -type f | sort | grep -v 'cache-' ; echo "workspace/tmp: $(ls workspace/tmp | wc -l) temp files"

say "Stopping guardd (its programs stay attached until guardd --detach)"
kill -TERM $GUARDD
wait $GUARDD
"$BIN/guardd" --detach --cgroup-root guard-demo

say "The records of demo-agent: how many, action, verdict, rule"
records=$(grep '"agent":"demo-agent"' events.jsonl)
echo "$records" | sed -n 's/.*"action":"\([a-z_]*\)","verdict":"\([a-z_]*\)".*"rule":"\([^"]*\)".*/\1 \2 \3/p' | sort | uniq -c
say "The budget's finding, the approval and its use"
echo "$records" | grep '"rule":"budget:destroy"' | head -n 1
echo "$records" | grep '"action":"ticket_approve"'
echo "$records" | grep '"state":"used"'

ok=true
for f in PG_VERSION base/16384/2613 base/16384/2619 global/pg_control; do [ -f "pgdata/$f" ] || ok=false; done
[ ! -e pgdata/postmaster.pid ] && [ -f workspace/app.sqlite ] || ok=false
[ "$(ls workspace/tmp | wc -l)" -eq 40 ] || ok=false
echo "$records" | grep -q '"state":"used"' || ok=false
[ "$agent_status" -eq 0 ] || ok=false
if ! $ok; then
    echo "demo: expected the data intact, 40 temp files kept by the budget, and the approved deletion done" >&2
    exit 1
fi
say "Done: the database and 40 temp files intact, one approved deletion, every step recorded"
