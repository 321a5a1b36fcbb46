#!/usr/bin/env python3
"""Reads the JetStream monitoring pages of the campaign's nodes.

  jsz.py ready IP...          exit 0 when every node names the same meta leader
  jsz.py leader STREAM IP...  print the server name leading STREAM ("n2")
  jsz.py conns IP...          print "client-ip>node" for every client connection

Each page is asked for with a 2 s timeout, once: a frozen or cut-off node
simply does not count. Run inside a campaign namespace (the addresses exist
only there).
"""
import json
import sys
import urllib.request


def page(ip, path):
    try:
        with urllib.request.urlopen(f"http://{ip}:8222{path}", timeout=2) as r:
            return json.load(r)
    except Exception:
        return None


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "ready":
        # One meta leader named by every node, and every peer current in
        # the leader's view.
        leaders = set()
        for ip in args:
            meta = (page(ip, "/jsz") or {}).get("meta_cluster") or {}
            leader = meta.get("leader")
            if not leader:
                return 1
            leaders.add(leader)
            peers = meta.get("replicas") or []
            # The leader's own page (its peers, not itself) says who is current.
            if all(r.get("name") != leader for r in peers):
                if len(peers) != len(args) - 1 or not all(r.get("current") for r in peers):
                    return 1
        return 0 if len(leaders) == 1 else 1
    if what == "conns":
        found = []
        for ip in args:
            p = page(ip, "/connz")
            for c in (p or {}).get("connections") or []:
                found.append(f"{c.get('ip')}>{(p or {}).get('server_name') or ip}")
        print(" ".join(sorted(found)))
        return 0
    if what == "leader":
        stream, ips = args[0], args[1:]
        votes = {}
        for ip in ips:
            p = page(ip, "/jsz?accounts=true&streams=true")
            for acc in (p or {}).get("account_details") or []:
                for s in acc.get("stream_detail") or []:
                    if s.get("name") == stream:
                        leader = (s.get("cluster") or {}).get("leader")
                        if leader:
                            votes[leader] = votes.get(leader, 0) + 1
        if not votes:
            return 1
        print(max(votes, key=votes.get))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
