"""Drives Guard's statement guard with psycopg 3 (libpq underneath; the
extended protocol, prepared statements, pipeline mode) and prints what it
saw as one JSON object per line, for tests/tests/databases.rs.

Usage: psycopg_client.py CONNINFO SCENARIO
"""

import json
import sys

import psycopg


def refusal(error):
    return {"sqlstate": error.sqlstate, "message": error.diag.message_primary}


def rules(conn):
    out = {}
    # A refusal: SQLSTATE 42501 with the rule's reason; the connection
    # stays usable.
    try:
        conn.execute("DROP TABLE t")
    except psycopg.Error as e:
        out["drop"] = refusal(e)
    out["after"] = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    # A server-side prepared statement re-used with other parameters.
    for i in (3, 4):
        out[f"prepared_{i}"] = conn.execute(
            "SELECT note FROM t WHERE id = %s", (i,), prepare=True
        ).fetchone()[0]
    # Pipeline mode: the refused statement fails, and the pipeline with it.
    results = []
    try:
        with conn.pipeline():
            first = conn.execute("SELECT count(*) FROM t")
            conn.execute("DELETE FROM t")
            conn.execute("INSERT INTO t VALUES (99, 'not kept')")
    except psycopg.Error as e:
        results.append(refusal(e))
    out["pipeline"] = results
    out["count_seen_in_pipeline"] = first.fetchone()[0]
    return out


def budgets(conn):
    out = {}
    try:
        conn.execute("DELETE FROM t WHERE id > %s", (5,))
    except psycopg.Error as e:
        out["over"] = refusal(e)
    out["within"] = conn.execute("DELETE FROM t WHERE id > %s", (8,)).rowcount
    with conn.pipeline():
        cur = conn.execute("SELECT id FROM t WHERE id <= %s ORDER BY id", (3,))
        ids = [r[0] for r in cur.fetchall()]
    out["read"] = ids
    return out


def masked(conn):
    out = {}
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute("SELECT email, ssn, notes FROM customers")
        out["binary" if binary else "text"] = list(cur.fetchone())
    return out


SCENARIOS = {"rules": rules, "budgets": budgets, "masked": masked}

if __name__ == "__main__":
    conninfo, scenario = sys.argv[1], sys.argv[2]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        print(json.dumps(SCENARIOS[scenario](conn)), flush=True)
