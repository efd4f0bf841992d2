#!/usr/bin/env python3
"""Compares the dnstap messages Unbound and dot-proxy wrote for the same lookups, as
decoded by `dnstap-read -y`. Both served `www.interop.test A` twice to dig (a miss, then a
cache hit) and forwarded the miss over DNS-over-TLS to the same upstream.

Must be equal: the client message types and their counts (and the forwarder ones where
Unbound writes them: 1.17, Debian 12's, writes none for TLS forwards), and per message
type the socket family,
the client's address (both log it in full here), the client-side protocol, and the
question, and for forwarder messages the upstream's address. Printed but allowed to
differ: ports, times, versions, IDs, and the forwarder messages' socket_protocol and query
address (Unbound 1.17 logs its TLS upstream queries as TCP and gives its outgoing address as
0.0.0.0; dot-proxy names the transport, DOT, which Debian 12's dnstap-read prints as UDP,
and leaves its outgoing address out)."""
import sys
from collections import Counter


def messages(path):
    text = open(path).read()
    out = []
    for doc in text.split("\n---"):
        fields = {}
        question = None
        in_question = False
        for line in doc.splitlines():
            s = line.strip()
            if "QUESTION SECTION" in s:
                in_question = True
                continue
            if in_question:
                if s.startswith(";") and len(s.split()) >= 3:
                    question = " ".join(s.lstrip(";").split()).lower()
                in_question = False
            if ": " in s:
                k, v = s.split(": ", 1)
                if k == "type" and v == "MESSAGE":
                    continue
                fields.setdefault(k.strip(), v.strip())
        if "type" in fields:
            fields["question"] = question
            out.append(fields)
    return out


def main():
    unbound, proxy = messages(sys.argv[1]), messages(sys.argv[2])
    ok = True
    tu = Counter(m["type"] for m in unbound)
    tp = Counter(m["type"] for m in proxy)
    print(f"types: unbound {dict(tu)}  dot-proxy {dict(tp)}")
    # Unbound 1.17 (Debian 12) writes no forwarder messages for queries it forwards over
    # TLS; where it writes them, they must match in number too.
    client = lambda c: {k: v for k, v in c.items() if k.startswith("CLIENT")}
    if not tu or client(tu) != client(tp):
        print("  client message types or counts differ")
        ok = False
    if any(k.startswith("FORWARDER") for k in tu) and tu != tp:
        print("  forwarder message types or counts differ")
        ok = False
    if not any(k.startswith("FORWARDER") for k in tu):
        print("  (Unbound wrote no forwarder messages for its DoT forwards: nothing to compare them with)")
    must = ["socket_family", "question"]
    client_must = ["query_address", "socket_protocol"]
    for kind in sorted(set(tu) | set(tp)):
        u = [m for m in unbound if m["type"] == kind]
        p = [m for m in proxy if m["type"] == kind]
        if not u or not p:
            continue
        keys = must + (client_must if kind.startswith("CLIENT") else ["response_address"])
        for k in keys:
            uv, pv = u[0].get(k), p[0].get(k)
            same = uv == pv
            print(f"  {kind:20} {k:16} unbound={uv!s:28} dot-proxy={pv!s:28} {'same' if same else 'DIFFERENT'}")
            ok &= same
        for k in ["socket_protocol", "query_address", "response_address"]:
            if k in keys:
                continue
            print(f"  {kind:20} {k:16} unbound={u[0].get(k)!s:28} dot-proxy={p[0].get(k)!s:28} (may differ)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
