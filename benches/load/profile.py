#!/usr/bin/env python3
"""Cost per request, counted rather than timed: valgrind's callgrind (instructions) and DHAT
(heap allocations) on the real release binaries, tokenhook beside the floor server.

Usage (from the repository root):
    python3 benches/load/profile.py [--scenario hit|miss|rs256|es256|eddsa] [--top 25]

Each server runs under valgrind twice, answering N1 and then N2 identical requests from oha
(keep-alive HTTP/1.1); (total(N2) - total(N1)) / (N2 - N1) is the cost of one request with
start-up, TLS handshakes and shutdown cancelled out. Allocations are counted at 1 and at 16
connections: equal counts mean nothing on the path grows with concurrency. For the JWT
scenarios the floor also verifies the signature with raw aws-lc-rs. Last come the
functions whose own instructions per request differ most between tokenhook and the floor.
Instruction counts do not depend on what else the machine is doing. --instructions-only
skips the allocation counts.
"""
import argparse, json, os, re, signal, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

N1, N2 = 300, 1300


H2 = False


def under_valgrind(tool, argv, port, n, conns, path, body, out, oha):
    flag = {"callgrind": "--callgrind-out-file", "dhat": "--dhat-out-file"}[tool]
    # Start-up (aws-lc's entropy gathering dominates it) is left out of the profile.
    extra = ["--instr-atstart=no"] if tool == "callgrind" else []
    p = subprocess.Popen(["valgrind", "-q", f"--tool={tool}", f"{flag}={out}"] + extra + argv,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run.wait_port(port, timeout=120)
        code, text = run.probe(port, path, body, [])
        if code != 201 or '"authenticated":true' not in text:
            sys.exit(f"misconfigured: {code} {text[:200]}")
        if tool == "callgrind":
            subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, capture_output=True)
        argv_oha = [oha, "-n", str(n), "-c", str(conns), "--no-tui", "--insecure", "--output-format", "json",
                    "-m", "POST", "-T", "application/json", "-d", body]
        if H2:
            argv_oha += ["--http2", "-p", "4"]
        argv_oha.append(f"https://127.0.0.1:{port}{path}")
        r = json.loads(subprocess.run(argv_oha, check=True, capture_output=True, text=True).stdout)
        bad = {c: k for c, k in r.get("statusCodeDistribution", {}).items() if not c.startswith("2")}
        if bad:
            sys.exit(f"non-2xx answers under load: {bad}")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
    if tool == "callgrind":
        with open(out) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
        raise RuntimeError("no totals in " + out)
    with open(out) as f:
        d = json.load(f)
    return sum(pp["tbk"] for pp in d["pps"])


def per_request(tool, argv_for_port, n_conns, path, body, work, label, oha):
    totals, outs = [], []
    for n in (N1, N2):
        port = run.free_port()
        out = os.path.join(work, f"{tool}.{label}.{n}.{n_conns}.out")
        totals.append(under_valgrind(tool, argv_for_port(port), port, n, n_conns, path, body, out, oha))
        outs.append(out)
    return (totals[1] - totals[0]) / (N2 - N1), outs


def own_by_function(out):
    """Instructions of each function's own code in one callgrind output."""
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", out],
                         capture_output=True, text=True).stdout
    by = {}
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(3)
            name = re.sub(r"^.*?:", "", name, count=1) if ":" in name else name
            name = re.sub(r" \[[^]]*\]$", "", name)
            by[name] = by.get(name, 0) + int(m.group(1).replace(",", ""))
    return by


def per_request_by_function(outs):
    small, large = own_by_function(outs[0]), own_by_function(outs[1])
    return {k: (large.get(k, 0) - small.get(k, 0)) / (N2 - N1) for k in set(small) | set(large)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="hit", choices=["hit", "miss", "rs256", "es256", "eddsa"])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--h2", action="store_true", help="HTTP/2 (4 streams per connection) instead of HTTP/1.1")
    ap.add_argument("--instructions-only", action="store_true", help="callgrind only, no DHAT runs")
    ap.add_argument("--keep", help="copy tokenhook's callgrind output here (for callgrind_annotate --inclusive=yes)")
    a = ap.parse_args()
    global H2
    H2 = a.h2
    if not subprocess.run(["sh", "-c", "command -v valgrind"], capture_output=True).returncode == 0:
        sys.exit("valgrind is required (Debian package valgrind)")
    oha = run.ensure_oha()
    st = run.Setup()
    path = "/apis/authentication.k8s.io/v1/tokenreviews"
    alg = None
    if a.scenario in ("hit", "miss"):
        body, kw = run.review(st.alice), dict(cache=a.scenario == "hit")
    else:
        alg = {"rs256": "RS256", "es256": "ES256", "eddsa": "EdDSA"}[a.scenario]
        body, kw = run.review(st.jwts[alg][1]), dict(cache=False, jwt=True)

    def tokenhook(port):
        cfg, _ = st.config(f"profile-{port}", **kw)
        # The config picked its own port; point it at ours.
        text = open(cfg).read()
        text = re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"', text)
        open(cfg, "w").write(text)
        return [st.tokenhook, "serve", "--config", cfg]

    rows = {}
    # The floor answers with the status tokenhook gives, so both write the same bytes.
    status = st.status_file("profile", kw, body)

    # For JWT misses the floor also checks the signature with raw aws-lc-rs (--verify): the
    # difference is then what tokenhook adds beyond TLS, HTTP, JSON and the signature itself.
    def floor(port):
        return st.floor_argv(port, verify=alg, status=status)

    rows["floor instructions"], floor_outs = per_request("callgrind", floor, 1, path, body, st.work, "floor", oha)
    rows["tokenhook instructions"], th_outs = per_request("callgrind", tokenhook, 1, path, body, st.work, "tokenhook", oha)
    if not a.instructions_only:
        rows["floor allocations, 1 connection"], _ = per_request("dhat", floor, 1, path, body, st.work, "floor", oha)
        rows["tokenhook allocations, 1 connection"], _ = per_request("dhat", tokenhook, 1, path, body, st.work, "tokenhook", oha)
        rows["tokenhook allocations, 16 connections"], _ = per_request("dhat", tokenhook, 16, path, body, st.work, "tokenhook16", oha)

    print(f"scenario {a.scenario}: cost of one request (N={N2}-{N1}, keep-alive {'HTTP/2' if H2 else 'HTTP/1.1'})")
    for k, v in rows.items():
        print(f"  {k:40s} {v:12.1f}")
    print(f"  {'instruction ratio tokenhook/floor':40s} {rows['tokenhook instructions'] / rows['floor instructions']:12.2f}")
    # Per function and per request, as the totals: (N2 run - N1 run) / (N2 - N1).
    th, fl = per_request_by_function(th_outs), per_request_by_function(floor_outs)
    print(f"\nfunctions by own instructions per request: tokenhook, floor, difference (largest differences first)")
    for name in sorted(set(th) | set(fl), key=lambda k: -abs(th.get(k, 0) - fl.get(k, 0)))[:a.top]:
        t, f = th.get(name, 0), fl.get(name, 0)
        print(f"  {t:9.0f} {f:9.0f} {t - f:+9.0f}  {name[:140]}")
    if a.keep:
        subprocess.run(["cp", th_outs[1], a.keep], check=True)
    subprocess.run(["rm", "-rf", st.work])


if __name__ == "__main__":
    main()
