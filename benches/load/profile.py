#!/usr/bin/env python3
"""Cost per request, counted rather than timed: valgrind's callgrind (instructions) and DHAT
(heap allocations) on the real release binaries, tokenhook beside the floor server.

Usage (from the repository root):
    python3 benches/load/profile.py [--scenario hit|miss|rs256|es256|eddsa|upstream] [--top 25] [--h2]
                                    [--instructions-only | --cachegrind [--ll SIZE,WAYS,LINE]]
                                    [--generator oha|h2load] [--log-level FILTER]

Each server runs under valgrind twice, answering N1 and then N2 identical requests from oha
(or h2load: --generator h2load) over keep-alive HTTP/1.1 (or HTTP/2: --h2);
(total(N2) - total(N1)) / (N2 - N1) is the cost of one request with start-up, TLS
handshakes and shutdown cancelled out. Allocations are counted at 1 and at 16 connections: equal counts mean nothing on the path grows with concurrency. For the JWT
scenarios the floor also verifies the signature with raw aws-lc-rs. In the `upstream` scenario
(the load harness's scenario f: a cache miss through a `tokenreview` verifier) the server
counted is the front, a tokenhook with no cache whose chain is one `tokenreview` verifier
calling an upstream tokenhook (no cache, one static verifier; run normally, not under
valgrind), and the floor is the floor server forwarding each review to the same upstream
(benches/floor.rs --upstream): the least a webhook in front of another can do. Last come the
functions whose own instructions per request differ most between tokenhook and the floor.
Instruction counts do not depend on what else the machine is doing. --instructions-only
skips the allocation counts.

--cachegrind counts simulated cache misses instead (valgrind's cachegrind, the same N2 - N1
difference): instruction-cache (I1), level-1 data (D1) and last-level (LL) misses per
request, then the functions whose D1 and LL misses per request differ most. The simulated
caches default to a 2-core AMD EPYC VM's (32 KiB 8-way L1s; --ll sets the last level,
8 MiB 16-way by default, its L3); 64-byte lines. Valgrind runs one thread at a time and
simulates one cache, so this shows the misses of the code's own working set, not lines
bouncing between cores.
"""
import argparse, json, os, re, signal, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

N1, N2 = 300, 1300


H2 = False


LL = "8388608,16,64"


def under_valgrind(tool, argv, port, n, conns, path, body, out, oha):
    flag = {"callgrind": "--callgrind-out-file", "dhat": "--dhat-out-file", "cachegrind": "--cachegrind-out-file"}[tool]
    # Start-up (aws-lc's entropy gathering dominates it) is left out of the profile.
    extra = ["--instr-atstart=no"] if tool == "callgrind" else []
    if tool == "cachegrind":
        # Start-up is in both runs and cancels out in the difference.
        extra = ["--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64", f"--LL={LL}"]
    p = subprocess.Popen(["valgrind", "-q", f"--tool={tool}", f"{flag}={out}"] + extra + argv,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run.wait_port(port, timeout=120)
        # Under valgrind a handshake can take seconds on a busy machine.
        code, text = run.probe(port, path, body, [], timeout=120)
        if code != 201 or '"authenticated":true' not in text:
            sys.exit(f"misconfigured: {code} {text[:200]}")
        if tool == "callgrind":
            subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, capture_output=True)
        if os.path.basename(oha).startswith("h2load"):
            # The Debian alternative to oha (--generator h2load): HTTP/1.1 with --h1.
            body_file = out + ".body"
            with open(body_file, "w") as f:
                f.write(body)
            argv_gen = [oha, "-n", str(n), "-c", str(conns), "-m", "4" if H2 else "1", "-d", body_file,
                        "-H", "content-type: application/json"] + ([] if H2 else ["--h1"])
            text = subprocess.run(argv_gen + [f"https://127.0.0.1:{port}{path}"], check=True, capture_output=True, text=True).stdout
            m = re.search(r"status codes: (\d+) 2xx", text)
            if not m or int(m.group(1)) != n:
                sys.exit(f"not every answer was 2xx:\n{text}")
        else:
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
    if tool == "cachegrind":
        events, summary = None, None
        with open(out) as f:
            for line in f:
                if line.startswith("events:"):
                    events = line.split()[1:]
                elif line.startswith("summary:"):
                    summary = [int(x) for x in line.split()[1:]]
        if not (events and summary):
            raise RuntimeError("no summary in " + out)
        return dict(zip(events, summary))
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
    if isinstance(totals[0], dict):
        return {k: (totals[1][k] - totals[0].get(k, 0)) / (N2 - N1) for k in totals[1]}, outs
    return (totals[1] - totals[0]) / (N2 - N1), outs


def cachegrind_by_function(out):
    """Each function's own event counts (Ir, I1mr, ILmr, Dr, D1mr, DLmr, Dw, D1mw, DLmw) in
    one cachegrind output, read from the file itself (fl=/fn= headers, then per-line counts)."""
    events, by, fn = [], {}, None
    with open(out) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line[:1].isdigit() and fn is not None:
                counts = line.split()[1:]
                acc = by.setdefault(fn, [0] * len(events))
                for i, c in enumerate(counts):
                    acc[i] += int(c)
    return {name: dict(zip(events, v)) for name, v in by.items()}


def misses(d):
    """I1, D1 (read + write) and LL (instruction + data) misses of one event dict."""
    g = lambda k: d.get(k, 0)
    return {"I1": g("I1mr"), "D1": g("D1mr") + g("D1mw"), "LL": g("ILmr") + g("DLmr") + g("DLmw")}


def cachegrind_report(th, fl, th_outs, fl_outs, top):
    print(f"simulated caches: I1 and D1 32768,8,64, LL {LL} (size,ways,line)")
    print(f"  {'per request':28s} {'tokenhook':>10s} {'floor':>10s} {'ratio':>6s}")
    rows = [("instructions (Ir)", th.get("Ir", 0), fl.get("Ir", 0))]
    for k, (t, f) in zip(("I1 misses", "D1 misses", "LL misses"), zip(misses(th).values(), misses(fl).values())):
        rows.append((k, t, f))
    rows.append(("data reads + writes", th.get("Dr", 0) + th.get("Dw", 0), fl.get("Dr", 0) + fl.get("Dw", 0)))
    for k, t, f in rows:
        print(f"  {k:28s} {t:10.1f} {f:10.1f} {t / f if f else float('nan'):6.2f}")

    def per_fn(outs):
        small, large = cachegrind_by_function(outs[0]), cachegrind_by_function(outs[1])
        names = set(small) | set(large)
        return {n: {k: (misses(large.get(n, {}))[k] - misses(small.get(n, {}))[k]) / (N2 - N1) for k in ("I1", "D1", "LL")} for n in names}
    t_fn, f_fn = per_fn(th_outs), per_fn(fl_outs)
    zero = {"I1": 0, "D1": 0, "LL": 0}
    for kind in ("D1", "LL", "I1"):
        print(f"\nfunctions by {kind} misses per request: tokenhook, floor, difference (largest differences first)")
        names = sorted(set(t_fn) | set(f_fn), key=lambda n: -abs(t_fn.get(n, zero)[kind] - f_fn.get(n, zero)[kind]))
        for n in names[:top]:
            t, f = t_fn.get(n, zero)[kind], f_fn.get(n, zero)[kind]
            if abs(t - f) < 0.05:
                break
            print(f"  {t:8.2f} {f:8.2f} {t - f:+8.2f}  {n[:140]}")


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
    global H2, LL
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="hit", choices=["hit", "miss", "rs256", "es256", "eddsa", "upstream"])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--h2", action="store_true", help="HTTP/2 (4 streams per connection) instead of HTTP/1.1")
    ap.add_argument("--instructions-only", action="store_true", help="callgrind only, no DHAT runs")
    ap.add_argument("--keep", help="copy tokenhook's callgrind output here (for callgrind_annotate --inclusive=yes)")
    ap.add_argument("--cachegrind", action="store_true", help="simulated cache misses per request (cachegrind) instead of instructions and allocations")
    ap.add_argument("--generator", default="oha", choices=["oha", "h2load"], help="what sends the requests (the server's cost per request does not depend on it)")
    ap.add_argument("--log-level", help="tokenhook's log.level (default: its default, info), to count what logging costs")
    ap.add_argument("--ll", default=LL, help=f"cachegrind's last-level cache as size,ways,line (default {LL})")
    a = ap.parse_args()
    H2, LL = a.h2, a.ll
    if not subprocess.run(["sh", "-c", "command -v valgrind"], capture_output=True).returncode == 0:
        sys.exit("valgrind is required (Debian package valgrind)")
    oha = run.ensure_oha() if a.generator == "oha" else run.ensure_debian("h2load", "nghttp2-client")
    st = run.Setup()
    path = "/apis/authentication.k8s.io/v1/tokenreviews"
    alg = None
    upstream = None
    if a.scenario in ("hit", "miss"):
        body, kw = run.review(st.alice), dict(cache=a.scenario == "hit")
    elif a.scenario == "upstream":
        path, body, kw = "/authenticate", run.review(st.alice), dict(cache=False)
        up_cfg, up_port = st.config("profile-upstream", cache=False, log_level=a.log_level)
        upstream = run.Server([st.tokenhook, "serve", "--config", up_cfg], up_port)
        kubeconfig = st.webhook_kubeconfig("profile-upstream", f"https://127.0.0.1:{up_port}{path}")
    else:
        alg = {"rs256": "RS256", "es256": "ES256", "eddsa": "EdDSA"}[a.scenario]
        body, kw = run.review(st.jwts[alg][1]), dict(cache=False, jwt=True)

    def tokenhook(port):
        extra = dict(upstream=kubeconfig) if upstream else {}
        cfg, _ = st.config(f"profile-{port}", log_level=a.log_level, **kw, **extra)
        # The config picked its own port; point it at ours.
        text = open(cfg).read()
        text = re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"', text)
        open(cfg, "w").write(text)
        return [st.tokenhook, "serve", "--config", cfg]

    rows = {}
    # The floor answers with the status tokenhook gives, so both write the same bytes.
    status = None if upstream else st.status_file("profile", kw, body)

    # For JWT misses the floor also checks the signature with raw aws-lc-rs (--verify): the
    # difference is then what tokenhook adds beyond TLS, HTTP, JSON and the signature itself.
    def floor(port):
        if upstream:
            return st.floor_argv(port) + ["--upstream", f"https://127.0.0.1:{upstream.port}{path}",
                                          "--upstream-ca", os.path.join(st.dev, "ca.crt")]
        return st.floor_argv(port, verify=alg, status=status)

    if a.cachegrind:
        fl, fl_outs = per_request("cachegrind", floor, 1, path, body, st.work, "floor", oha)
        th, th_outs = per_request("cachegrind", tokenhook, 1, path, body, st.work, "tokenhook", oha)
        print(f"scenario {a.scenario}: simulated cache misses of one request (N={N2}-{N1}, keep-alive {'HTTP/2' if H2 else 'HTTP/1.1'})")
        cachegrind_report(th, fl, th_outs, fl_outs, a.top)
        if a.keep:
            subprocess.run(["cp", th_outs[1], a.keep], check=True)
        if upstream:
            upstream.stop()
        subprocess.run(["rm", "-rf", st.work])
        return
    fl_name = "forwarding floor" if upstream else "floor"
    rows[f"{fl_name} instructions"], floor_outs = per_request("callgrind", floor, 1, path, body, st.work, "floor", oha)
    rows["tokenhook instructions"], th_outs = per_request("callgrind", tokenhook, 1, path, body, st.work, "tokenhook", oha)
    if not a.instructions_only:
        rows[f"{fl_name} allocations, 1 connection"], _ = per_request("dhat", floor, 1, path, body, st.work, "floor", oha)
        rows["tokenhook allocations, 1 connection"], _ = per_request("dhat", tokenhook, 1, path, body, st.work, "tokenhook", oha)
        rows["tokenhook allocations, 16 connections"], _ = per_request("dhat", tokenhook, 16, path, body, st.work, "tokenhook16", oha)

    print(f"scenario {a.scenario}: cost of one request (N={N2}-{N1}, keep-alive {'HTTP/2' if H2 else 'HTTP/1.1'})")
    for k, v in rows.items():
        print(f"  {k:40s} {v:12.1f}")
    print(f"  {'instruction ratio tokenhook/floor':40s} {rows['tokenhook instructions'] / rows[f'{fl_name} instructions']:12.2f}")
    # Per function and per request, as the totals: (N2 run - N1 run) / (N2 - N1).
    th, fl = per_request_by_function(th_outs), per_request_by_function(floor_outs)
    print(f"\nfunctions by own instructions per request: tokenhook, floor, difference (largest differences first)")
    for name in sorted(set(th) | set(fl), key=lambda k: -abs(th.get(k, 0) - fl.get(k, 0)))[:a.top]:
        t, f = th.get(name, 0), fl.get(name, 0)
        print(f"  {t:9.0f} {f:9.0f} {t - f:+9.0f}  {name[:140]}")
    if a.keep:
        subprocess.run(["cp", th_outs[1], a.keep], check=True)
    if upstream:
        upstream.stop()
    subprocess.run(["rm", "-rf", st.work])


if __name__ == "__main__":
    main()
