#!/usr/bin/env python3
"""Load harness: tokenhook against the floor server, in the same run, alternately, with
several established load generators.

Usage (from the repository root):
    python3 benches/load/run.py [--seconds 6] [--rounds 3] [--out benches/load/results.json]
                                [--only LETTER] [--connections N] [--protocol http/1.1|h2]
                                [--generators oha,wrk,h2load] [--log-level FILTER]
                                [--profile release|debug]

It installs its load generators itself: oha from crates.io (cargo install), wrk and h2load
from Debian (apt-get install wrk nghttp2-client). It builds tokenhook and the floor server
in release mode, pins each server to core 0 and the generator to core 1, and for every
scenario and every generator that speaks its protocol (HTTP/1.1: oha and wrk; HTTP/2: oha
and h2load) runs the floor server and tokenhook side by side and loads each in turn, with the
same settings, --rounds times (--seconds per server split over the rounds; req/s is the
mean of the rounds, percentiles the median round's), so that a slow spell of the shared
host falls on both rather than on whichever ran during it. Each server's
CPU time (user + system, from /proc/PID/stat) over the generator's run, divided by the
requests answered, gives the CPU per request. tokenhook runs with its default logging.
Results: Markdown tables on stdout and JSON in --out, with the CPU model and cache sizes.
The filters (--only, --connections, --protocol, --generators) are for smoke runs, and so is
--profile debug (debug binaries: figures meaningless, checks that everything runs).

Scenario f measures a cache miss that goes to an upstream verifier: a second tokenhook (one
static verifier, no cache) as the upstream, called directly, then through a front tokenhook
(no cache, one `tokenreview` verifier pointing at the upstream), both on core 0, with the
same TokenReview body, at 1 connection (latency) and 16. The front's p50 minus the
upstream's is what tokenhook adds per miss (issue 14's target: at most 50 µs). Then the
forwarding floor (benches/floor.rs --upstream: the floor server POSTing each review's spec to
the same upstream and answering its status unparsed) in the front's place: what the hop
itself adds on this machine, which tokenhook's added latency and CPU are read against.
"""
import argparse, base64, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_oha():
    found = shutil.which("oha") or (os.path.exists(os.path.expanduser("~/.cargo/bin/oha")) and os.path.expanduser("~/.cargo/bin/oha"))
    if found:
        return found
    print("installing oha from crates.io (cargo install oha --locked)…", file=sys.stderr)
    sh("cargo", "install", "oha", "--locked")
    return shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")


def ensure_debian(command, package):
    """`command` from Debian's `package`, installed with apt-get when missing."""
    found = shutil.which(command)
    if found:
        return found
    print(f"installing {command} from Debian (apt-get install {package})…", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    sh(*sudo, "apt-get", "update", "-qq", env=env)
    sh(*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package, env=env, stdout=subprocess.DEVNULL)
    return shutil.which(command) or sys.exit(f"{command} still missing after installing {package}")


def version_of(argv):
    """The first line a generator prints about its version (wrk exits non-zero for -v)."""
    r = subprocess.run(argv, capture_output=True, text=True)
    return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"


def machine():
    """CPU model, cores and cache sizes (lscpu), so that figures can be read against the machine."""
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C")).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except OSError:
        pass
    model = info.get("Model name") or next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads_per_core": info.get("Thread(s) per core", ""),
        "l1d": info.get("L1d cache", ""),
        "l1i": info.get("L1i cache", ""),
        "l2": info.get("L2 cache", ""),
        "l3": info.get("L3 cache", ""),
        "hypervisor": info.get("Hypervisor vendor", ""),
    }


def ensure_cryptography():
    try:
        import cryptography  # noqa: F401
    except ImportError:
        sh(sys.executable, "-m", "pip", "install", "--quiet", "cryptography")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_material(alg, issuer):
    """A private key's public JWK, a token signed with it (Python's cryptography, not tokenhook),
    and the public key in the form aws-lc-rs takes (for the floor's raw verify)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    now = int(time.time())
    header = {"alg": alg, "kid": alg.lower(), "typ": "JWT"}
    claims = {"iss": issuer, "aud": "bench", "sub": "bench-user", "iat": now, "exp": now + 7200}
    signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
    if alg == "RS256":
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        n = k.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": b64(n.n.to_bytes(256, "big")), "e": b64(n.e.to_bytes(3, "big"))}
        sig = k.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        raw = k.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)
    elif alg == "ES256":
        k = ec.generate_private_key(ec.SECP256R1())
        n = k.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
        r, s = decode_dss_signature(k.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        raw = k.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    else:
        k = ed25519.Ed25519PrivateKey.generate()
        raw = k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        sig = k.sign(signing_input)
    jwk.update({"kid": alg.lower(), "alg": alg, "use": "sig"})
    return jwk, signing_input.decode() + "." + b64(sig), raw


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} never opened")


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces; count fields after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, argv, port):
        self.port = port
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["taskset", "-c", "0"] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        self.ready_ms = (time.monotonic() - self.started) * 1000

    def stop(self):
        rss = peak_rss_kib(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return rss


def probe(port, path, body, headers, timeout=10):
    """One request before the load: the scenario must be answering what it claims to measure."""
    import http.client, ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    hdrs = {"Content-Type": "application/json"}
    for h in headers:
        k, v = h.split(": ", 1)
        hdrs[k] = v
    c.request("POST", path, body=body, headers=hdrs)
    r = c.getresponse()
    return r.status, r.read().decode()


def measure(label, srv, port, path, body, headers, run, behind=None):
    """One generator run (`run()`) against `srv`, listening on `port`, after a probe: the
    scenario must be answering what it claims to measure. Adds `srv`'s CPU time per request,
    and with `behind` (a server `srv` calls) that one's as `behind_cpu_us_per_request`."""
    code, text = probe(port, path, body, headers)
    if code not in (200, 201) or ("TokenReview" in text and '"authenticated":true' not in text):
        sys.exit(f"{label} answered {code} {text[:300]}: misconfigured, not measured")
    procs = [srv] + ([behind] if behind else [])
    cpu0 = [cpu_seconds(s.proc.pid) for s in procs]
    r = run()
    cpu = [cpu_seconds(s.proc.pid) - c for s, c in zip(procs, cpu0)]
    bad = {c: n for c, n in r["status"].items() if not (c.startswith("2") and n)}
    if bad:
        sys.exit(f"{label} answered {bad}: the scenario is misconfigured, not measured")
    n = max(r["requests"], 1)
    r["cpu_us_per_request"] = cpu[0] * 1e6 / n
    if behind:
        r["behind_cpu_us_per_request"] = cpu[1] * 1e6 / n
    return r


def combine(rounds):
    """One server's rounds as one result: requests, CPU time and answers summed, req/s the
    mean of the rounds', percentiles the median round's."""
    import statistics
    n = sum(r["requests"] for r in rounds)
    status = {}
    for r in rounds:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
    out = {
        "rps": sum(r["rps"] for r in rounds) / len(rounds),
        "requests": n,
        "status": status,
        "cpu_us_per_request": sum(r["cpu_us_per_request"] * r["requests"] for r in rounds) / max(n, 1),
        "rounds_rps": [round(r["rps"]) for r in rounds],
    }
    for k in ("p50_ms", "p99_ms", "p999_ms"):
        out[k] = statistics.median(r[k] for r in rounds)
    return out


def run_oha(oha, url, body, seconds, conns, http2, keepalive, headers, work):
    argv = ["taskset", "-c", "1", oha, "-z", f"{seconds}s", "-c", str(conns), "--no-tui", "--insecure",
            "--output-format", "json", "-m", "POST", "-T", "application/json", "-d", body]
    for h in headers:
        argv += ["-H", h]
    if http2:
        argv += ["--http2", "-p", "4"]
    if not keepalive:
        argv += ["--disable-keepalive"]
    out = subprocess.run(argv + [url], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    pct = r.get("latencyPercentiles", {})
    codes = r.get("statusCodeDistribution", {})
    return {
        "rps": r["summary"]["requestsPerSec"],
        "requests": sum(codes.values()),
        "p50_ms": (pct.get("p50") or 0) * 1000,
        "p99_ms": (pct.get("p99") or 0) * 1000,
        "p999_ms": (pct.get("p99.9") or 0) * 1000,
        "status": codes,
    }


# wrk's script: method, body and headers of every request, and a JSON summary at the end
# (latencies in microseconds; non-2xx/3xx answers are counted in errors.status).
WRK_LUA = """
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\\n]+") do
  local k, v = line:match("^([^:]+):%s*(.*)$")
  if k then wrk.headers[k] = v end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "\\nWRK_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, \\"p999_us\\": %d, " ..
    "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(wrk, url, body, seconds, conns, http2, keepalive, headers, work):
    """wrk (HTTP/1.1 only): one thread, `conns` connections; `Connection: close` makes it
    open a new connection (and TLS session) per request."""
    assert not http2
    script, body_file = os.path.join(work, "post.lua"), os.path.join(work, "wrk-body.json")
    with open(script, "w") as f:
        f.write(WRK_LUA)
    with open(body_file, "w") as f:
        f.write(body)
    hdrs = list(headers) + ([] if keepalive else ["Connection: close"])
    env = dict(os.environ, BENCH_BODY_FILE=body_file, BENCH_HEADERS="\n".join(hdrs))
    argv = ["taskset", "-c", "1", wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script, url]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
    line = next((l for l in out.splitlines() if l.startswith("WRK_JSON ")), None)
    if line is None:
        sys.exit(f"wrk printed no summary:\n{out}")
    r = json.loads(line[len("WRK_JSON "):])
    errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    good = r["requests"] - r["status"]
    # wrk counts answers >= 400 as status errors; it does not keep the codes themselves.
    status = {"2xx/3xx": good}
    if errors:
        status["errors " + ",".join(f"{k}={v}" for k, v in errors.items())] = sum(errors.values())
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "requests": r["requests"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "p999_ms": r["p999_us"] / 1000,
        "status": status,
    }


def run_h2load(h2load, url, body, seconds, conns, http2, keepalive, headers, work):
    """h2load (nghttp2), HTTP/2 over TLS with ALPN: `conns` connections of 4 concurrent
    streams each, as oha's `--http2 -p 4`. It prints no percentiles; they come from its
    per-request log (elapsed microseconds in the third column)."""
    assert http2 and keepalive
    body_file, log = os.path.join(work, "h2load-body.json"), os.path.join(work, "h2load.log")
    with open(body_file, "w") as f:
        f.write(body)
    argv = ["taskset", "-c", "1", h2load, "-t", "1", "-c", str(conns), "-m", "4", "-D", str(seconds),
            "-d", body_file, "-H", "content-type: application/json", "--log-file", log]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], check=True, capture_output=True, text=True).stdout
    import re
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and reqs and codes):
        sys.exit(f"h2load output not understood:\n{out}")
    lat = []
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else 0
    status = {k: int(v) for k, v in zip(("2xx", "3xx", "4xx", "5xx"), codes.groups()) if int(v)}
    failed = int(reqs.group(5)) + int(reqs.group(6)) + int(reqs.group(7))
    if failed:
        status["failed/errored/timeout"] = failed
    return {
        "rps": float(m.group(3)),
        "requests": int(reqs.group(3)),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "p999_ms": pick(0.999),
        "status": status,
    }


GENERATORS = {
    # name: (runner, speaks HTTP/1.1, speaks HTTP/2)
    "oha": (run_oha, True, True),
    "wrk": (run_wrk, True, False),
    "h2load": (run_h2load, False, True),
}


class Setup:
    """Release binaries (debug ones with `profile="debug"`, for smoke runs), a dev directory made
    by `tokenhook dev`, JWT material, and config writing."""

    def __init__(self, profile="release"):
        ensure_cryptography()
        # Always with the floor: building the binary alone unifies dependency features
        # differently (the example pulls in dev-dependencies), which rebuilds tokenhook.
        build = ["cargo", "build", "--quiet", "--bin", "tokenhook", "--example", "floor"]
        sh(*build, *(["--release"] if profile == "release" else []), cwd=ROOT)
        target = os.path.join(ROOT, "target", profile)
        self.tokenhook, self.floor = os.path.join(target, "tokenhook"), os.path.join(target, "examples", "floor")
        self.work = tempfile.mkdtemp(prefix="tokenhook-load-")
        dev = self.dev = os.path.join(self.work, "dev")
        # Certificates, demo tokens and a signing key, made by tokenhook dev itself.
        p = subprocess.Popen([self.tokenhook, "dev", "--dir", dev, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in p.stdout:
            if line.strip().startswith("curl "):
                break
        p.terminate(); p.wait()
        with open(os.path.join(dev, "tokens.csv")) as f:
            self.alice = next(l.split(",")[0] for l in f if ",alice," in l)
        self.issuer = "https://issuer.bench.example"
        self.jwts = {alg: jwt_material(alg, self.issuer) for alg in ("RS256", "ES256", "EdDSA")}
        with open(os.path.join(dev, "bench-jwks.json"), "w") as f:
            json.dump({"keys": [j for j, _, _ in self.jwts.values()]}, f)
        for alg, (_, _, raw) in self.jwts.items():
            with open(os.path.join(dev, f"bench-{alg}.pub"), "wb") as f:
                f.write(raw)

    def floor_argv(self, port, verify=None, status=None):
        argv = [self.floor, "--listen", f"127.0.0.1:{port}", "--cert", os.path.join(self.dev, "server.crt"), "--key", os.path.join(self.dev, "server.key")]
        if status:
            argv += ["--status", status]
        if verify:
            argv += ["--verify", verify, "--public-key", os.path.join(self.dev, f"bench-{verify}.pub")]
        return argv

    def status_file(self, name, cfg, body):
        """The status tokenhook answers `body` with under `cfg`, written for the floor's --status."""
        cfg_path, port = self.config(f"{name}-status", **cfg)
        srv = Server([self.tokenhook, "serve", "--config", cfg_path], port)
        try:
            code, text = probe(port, "/apis/authentication.k8s.io/v1/tokenreviews", body, [])
        finally:
            srv.stop()
        path = os.path.join(self.dev, f"{name}-status.json")
        with open(path, "w") as f:
            json.dump(json.loads(text)["status"], f)
        return path

    def config(self, name, cache=True, jwt=False, mint=False, log_level=None, upstream=None):
        """A configuration `name`.toml in the dev directory and the port it listens on. With
        `upstream` (a webhook kubeconfig) the chain is that one `tokenreview` verifier."""
        port = free_port()
        lines = [
            "[server]", f'listen = "127.0.0.1:{port}"', 'cert_file = "server.crt"', 'key_file = "server.key"',
            "[cache]", f"enabled = {'true' if cache else 'false'}",
        ]
        # Logging stays at tokenhook's defaults (JSON, info): what a deployment runs with.
        if log_level:
            lines += ["[log]", f'level = "{log_level}"']
        if mint:
            lines += ["[mint]", f'issuer = "https://127.0.0.1:{port}"', 'signing_key_file = "sa-signing.key"',
                      "[[mint.service_accounts]]", 'namespace = "default"', 'name = "default"',
                      "[[mint.policy]]", 'users = ["alice"]', 'namespaces = ["*"]', 'service_accounts = ["*"]', 'audiences = ["*"]']
        if upstream:
            lines += ["[[verifiers]]", 'type = "tokenreview"', 'name = "upstream"', f'kubeconfig = "{upstream}"', 'version = "v1"']
        else:
            lines += ["[[verifiers]]", 'type = "static"', 'file = "tokens.csv"']
        if jwt:
            lines += ["[[verifiers]]", 'type = "jwt"', 'jwks_file = "bench-jwks.json"', "[verifiers.issuer]",
                      f'url = "{self.issuer}"', 'audiences = ["bench"]', "[verifiers.claimMappings.username]", 'claim = "sub"', 'prefix = ""']
        path = os.path.join(self.dev, f"{name}.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path, port

    def webhook_kubeconfig(self, name, url):
        """kube's webhook kubeconfig for `url`, trusting the dev CA (the upstream's serving
        certificate is the dev one); no client credential: the upstream has no `[callers]`,
        so that the generators can call it directly too."""
        path = os.path.join(self.dev, f"{name}.kubeconfig")
        with open(path, "w") as f:
            f.write("\n".join([
                "apiVersion: v1", "kind: Config",
                "clusters:", "- name: upstream", "  cluster:", f'    server: "{url}"', "    certificate-authority: ca.crt",
                "users:", "- name: tokenhook", "  user: {}",
                "contexts:", "- name: webhook", "  context: {cluster: upstream, user: tokenhook}",
                "current-context: webhook",
            ]) + "\n")
        return path


def review(tok):
    return json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": tok}})


UPSTREAM_MISS = "f: cache miss through an upstream"


def upstream_miss(st, a, tools, wanted, gen_versions):
    """Scenario f, per HTTP/1.1 generator and at 1 and 16 connections: the upstream (a
    tokenhook with one static verifier, no cache) answered directly, then through the front
    (a tokenhook with no cache and one `tokenreview` verifier pointing at the upstream), with
    the same TokenReview body on the same path. Both servers run on core 0, as every server
    here does (the generator has core 1 to itself): the front's added latency then includes
    the switches between the two processes a miss makes, and at 16 connections the two share
    one core's throughput, so the front's CPU per request is reported separately. The front
    reaches the upstream over HTTP/2 (its outbound client offers h2 first), the generators
    over HTTP/1.1: the upstream's CPU per request behind the front shows what that costs it.
    Last, the forwarding floor in the front's place, against the same upstream."""
    path, body = "/authenticate", review(st.alice)
    rows = []
    for gen in wanted:
        runner, h1_ok, _ = GENERATORS[gen]
        if not h1_ok:
            continue
        for conns in (1, 16):
            if a.connections is not None and conns != a.connections:
                continue
            row = {"scenario": UPSTREAM_MISS, "connections": conns, "protocol": "http/1.1", "keepalive": True,
                   "generator": gen, "generator_version": gen_versions[gen]}
            load = lambda port: lambda: runner(tools[gen], f"https://127.0.0.1:{port}{path}", body, a.seconds, conns, False, True, [], st.work)
            up_cfg, up_port = st.config("f-upstream", cache=False, log_level=a.log_level)
            up, front, rss = Server([st.tokenhook, "serve", "--config", up_cfg], up_port), None, 0
            try:
                row["upstream"] = measure(f"{UPSTREAM_MISS} ({gen}): upstream", up, up_port, path, body, [], load(up_port))
                kubeconfig = st.webhook_kubeconfig("f-upstream", f"https://127.0.0.1:{up_port}{path}")
                front_cfg, front_port = st.config("f-front", cache=False, log_level=a.log_level, upstream=kubeconfig)
                front = Server([st.tokenhook, "serve", "--config", front_cfg], front_port)
                row["front"] = measure(f"{UPSTREAM_MISS} ({gen}): front", front, front_port, path, body, [], load(front_port), behind=up)
                rss = front.stop()
                front_ready_ms, front = front.ready_ms, None
                # The floor of forwarding: the floor server, forwarding each review's spec to the
                # same upstream and answering its status unparsed (benches/floor.rs --upstream).
                fl_port = free_port()
                floor = Server(st.floor_argv(fl_port) + ["--upstream", f"https://127.0.0.1:{up_port}{path}",
                                                         "--upstream-ca", os.path.join(st.dev, "ca.crt")], fl_port)
                try:
                    row["floor_front"] = measure(f"{UPSTREAM_MISS} ({gen}): floor forwarding", floor, fl_port, path, body, [], load(fl_port), behind=up)
                finally:
                    floor.stop()
            finally:
                if front:
                    rss = front.stop()
                up.stop()
            row["front"].update(peak_rss_mib=round(rss / 1024, 1), ready_ms=round(front_ready_ms, 1))
            u, f, ff = row["upstream"], row["front"], row["floor_front"]
            row["added_p50_us"] = (f["p50_ms"] - u["p50_ms"]) * 1000
            row["added_p99_us"] = (f["p99_ms"] - u["p99_ms"]) * 1000
            row["floor_added_p50_us"] = (ff["p50_ms"] - u["p50_ms"]) * 1000
            rows.append(row)
            print(f"{UPSTREAM_MISS} c={conns} [{gen}]: upstream p50 {u['p50_ms'] * 1000:.0f} µs {u['rps']:.0f}/s, "
                  f"through the front p50 {f['p50_ms'] * 1000:.0f} µs {f['rps']:.0f}/s: added {row['added_p50_us']:.0f} µs "
                  f"(target ≤ 50 at 1 connection; the forwarding floor adds {row['floor_added_p50_us']:.0f}), "
                  f"front CPU/request {f['cpu_us_per_request']:.1f} µs (forwarding floor {ff['cpu_us_per_request']:.1f})", file=sys.stderr)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=6, help="load per server and row, split over the rounds")
    ap.add_argument("--rounds", type=int, default=3, help="turns each server of a row takes, alternating (default 3)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "load", "results.json"))
    ap.add_argument("--only", help="run only the scenarios whose letter is this (a, b, c, d, e, f)")
    ap.add_argument("--connections", type=int, help="run only the rows with this many connections")
    ap.add_argument("--protocol", choices=["http/1.1", "h2"], help="run only the rows of this protocol")
    ap.add_argument("--log-level", help="tokenhook's log.level (default: its default, info)")
    ap.add_argument("--generators", default="oha,wrk,h2load", help="comma-separated subset of oha, wrk, h2load")
    ap.add_argument("--profile", choices=["release", "debug"], default="release",
                    help="binaries to build and run; debug only for smoke runs (its figures mean nothing)")
    a = ap.parse_args()
    if a.rounds < 1 or a.seconds < 1:
        sys.exit("--rounds and --seconds: at least 1")
    wanted = [g for g in a.generators.split(",") if g]
    if not wanted or any(g not in GENERATORS for g in wanted):
        sys.exit(f"--generators: choose among {', '.join(GENERATORS)}")
    tools = {}
    if "oha" in wanted:
        tools["oha"] = ensure_oha()
    if "wrk" in wanted:
        tools["wrk"] = ensure_debian("wrk", "wrk")
    if "h2load" in wanted:
        tools["h2load"] = ensure_debian("h2load", "nghttp2-client")
    versions = {
        "oha": lambda p: version_of([p, "--version"]),
        "wrk": lambda p: version_of([p, "-v"]).split(" [")[0],
        "h2load": lambda p: version_of([p, "--version"]),
    }
    gen_versions = {g: versions[g](p) for g, p in tools.items()}
    per_round = max(1, a.seconds // max(a.rounds, 1))
    st = Setup(a.profile)
    tokenhook, config = st.tokenhook, st.config
    alice, jwts, work = st.alice, st.jwts, st.work

    scenarios = []
    for conns in (16, 64):
        for h2 in (False, True):
            scenarios.append(("a: cache hit, static", dict(cache=True), review(alice), conns, h2, True, "/apis/authentication.k8s.io/v1/tokenreviews", []))
    scenarios.append(("b: cache miss, static", dict(cache=False), review(alice), 16, False, True, "/apis/authentication.k8s.io/v1/tokenreviews", []))
    for alg, (_, tok, _) in jwts.items():
        scenarios.append((f"c: cache miss, JWT {alg}", dict(cache=False, jwt=True, alg=alg), review(tok), 16, False, True, "/apis/authentication.k8s.io/v1/tokenreviews", []))
    scenarios.append(("d: mint TokenRequest", dict(mint=True), json.dumps({"spec": {"audiences": ["vault"]}}), 16, False, True,
                      "/api/v1/namespaces/default/serviceaccounts/default/token", [f"Authorization: Bearer {alice}"]))
    scenarios.append(("e: new TLS connection per request", dict(cache=True), review(alice), 16, False, False, "/apis/authentication.k8s.io/v1/tokenreviews", []))
    scenarios = [s for s in scenarios
                 if (a.only is None or s[0].startswith(a.only + ":"))
                 and (a.connections is None or s[3] == a.connections)
                 and (a.protocol is None or ("h2" if s[4] else "http/1.1") == a.protocol)]

    results = []
    for i, (name, cfg, body, conns, h2, keepalive, path, headers) in enumerate(scenarios):
        cfg = dict(cfg)
        alg = cfg.pop("alg", None)
        # JWT misses also run the floor plus the raw aws-lc-rs verify: the target's bound,
        # 1 / (floor cost + raw verify cost), measured in one server.
        servers = ("floor", "floor_verify", "tokenhook") if alg else ("floor", "tokenhook")
        # The floor answers with the very status tokenhook gives for this body, so both write
        # the same response bytes.
        status = st.status_file(f"bench{i}", cfg, body) if "tokenreviews" in path else None
        for gen in wanted:
            runner, h1_ok, h2_ok = GENERATORS[gen]
            if not (h2_ok if h2 else h1_ok):
                continue
            row = {"scenario": name, "connections": conns, "protocol": "h2" if h2 else "http/1.1", "keepalive": keepalive,
                   "generator": gen, "generator_version": gen_versions[gen]}
            # All of the row's servers run at once (idle ones cost nothing) and the load goes
            # to each in turn, `--rounds` times: a slow spell of the shared host then falls
            # on every server of the row alike instead of on whichever ran during it.
            srvs, rounds = {}, {who: [] for who in servers}
            try:
                for who in servers:
                    if who.startswith("floor"):
                        port = free_port()
                        srvs[who] = (Server(st.floor_argv(port, alg if who == "floor_verify" else None, status), port), port)
                    else:
                        cfg_path, port = config(f"bench{i}", log_level=a.log_level, **cfg)
                        srvs[who] = (Server([tokenhook, "serve", "--config", cfg_path], port), port)
                for _ in range(a.rounds):
                    for who in servers:
                        srv, port = srvs[who]
                        rounds[who].append(measure(
                            f"{name} ({gen}): {who}", srv, port, path, body, headers,
                            lambda: runner(tools[gen], f"https://127.0.0.1:{port}{path}", body, per_round, conns, h2, keepalive, headers, work)))
            finally:
                rss = {who: srv.stop() for who, (srv, _) in srvs.items()}
            for who in servers:
                r = combine(rounds[who])
                r["peak_rss_mib"] = round(rss[who] / 1024, 1)
                r["ready_ms"] = round(srvs[who][0].ready_ms, 1)
                row[who] = r
            row["throughput_ratio"] = row["tokenhook"]["rps"] / row["floor"]["rps"]
            row["cpu_ratio"] = row["tokenhook"]["cpu_us_per_request"] / max(row["floor"]["cpu_us_per_request"], 1e-9)
            row["p99_ratio"] = row["tokenhook"]["p99_ms"] / max(row["floor"]["p99_ms"], 1e-9)
            if alg:
                row["bound_ratio"] = row["tokenhook"]["rps"] / row["floor_verify"]["rps"]
                row["bound_cpu_ratio"] = row["tokenhook"]["cpu_us_per_request"] / max(row["floor_verify"]["cpu_us_per_request"], 1e-9)
            results.append(row)
            extra = f", floor+verify {row['floor_verify']['rps']:.0f}/s ratio {row['bound_ratio']:.2f}" if alg else ""
            print(f"{name} c={conns} {row['protocol']} [{gen}]: tokenhook {row['tokenhook']['rps']:.0f}/s floor {row['floor']['rps']:.0f}/s "
                  f"ratio {row['throughput_ratio']:.2f}, CPU/request {row['tokenhook']['cpu_us_per_request']:.1f} µs "
                  f"({row['cpu_ratio']:.2f}× floor){extra}", file=sys.stderr)

    through = upstream_miss(st, a, tools, wanted, gen_versions) if a.only in (None, "f") and a.protocol in (None, "http/1.1") else []

    meta = dict(machine(), date=time.strftime("%Y-%m-%d"), seconds_per_run=a.seconds, rounds=a.rounds, seconds_per_round=per_round, generators=gen_versions,
                logging=f"json, {a.log_level}" if a.log_level else "tokenhook defaults (json, info)", profile=a.profile)
    with open(a.out, "w") as f:
        json.dump({"machine": meta, "results": results, "upstream_miss": through}, f, indent=2)
    m = meta
    print(f"Machine: {m['cpu']}, {m['cores']} cores; L1d {m['l1d']}, L1i {m['l1i']}, L2 {m['l2']}, L3 {m['l3']}")
    if a.profile != "release":
        print(f"{a.profile} binaries: a smoke run, these figures mean nothing")
    if results:
        table(results)
    if through:
        print()
        print("| f: miss through an upstream | conns | generator | upstream req/s | through front (forwarding floor) req/s | upstream p50 / p99 µs "
              "| through front p50 / p99 µs | added p50 µs, front (forwarding floor) | front CPU µs/req (forwarding floor) | upstream CPU µs/req (direct / behind front) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in through:
            u, f, ff = r["upstream"], r["front"], r["floor_front"]
            print(f"| | {r['connections']} | {r['generator']} | {u['rps']:.0f} | {f['rps']:.0f} ({ff['rps']:.0f}) | {u['p50_ms'] * 1000:.0f} / {u['p99_ms'] * 1000:.0f} "
                  f"| {f['p50_ms'] * 1000:.0f} / {f['p99_ms'] * 1000:.0f} | {r['added_p50_us']:.0f} ({r['floor_added_p50_us']:.0f}) "
                  f"| {f['cpu_us_per_request']:.1f} ({ff['cpu_us_per_request']:.1f}) "
                  f"| {u['cpu_us_per_request']:.1f} / {f['behind_cpu_us_per_request']:.1f} |")
    shutil.rmtree(work, ignore_errors=True)


def table(results):
    """The floor-against-tokenhook tables of scenarios a to e."""
    print()
    print("| scenario | conns | proto | generator | tokenhook req/s | floor req/s | ratio | CPU µs/req (floor) | CPU ratio | p50 ms | p99 ms (floor) | p999 ms | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t, fl = r["tokenhook"], r["floor"]
        print(f"| {r['scenario']} | {r['connections']} | {r['protocol']}{'' if r['keepalive'] else ', no keep-alive'} | {r['generator']} "
              f"| {t['rps']:.0f} | {fl['rps']:.0f} | {r['throughput_ratio']:.2f} | {t['cpu_us_per_request']:.1f} ({fl['cpu_us_per_request']:.1f}) "
              f"| {r['cpu_ratio']:.2f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} ({fl['p99_ms']:.2f}) | {t['p999_ms']:.2f} | {t['peak_rss_mib']} |")
    if any("bound_ratio" in r for r in results):
        print()
        print("| JWT cache miss | generator | tokenhook req/s | floor + raw verify req/s | ratio | CPU ratio | p99 ms (floor + raw verify) |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            if "bound_ratio" in r:
                t, fv = r["tokenhook"], r["floor_verify"]
                print(f"| {r['scenario'].rsplit(' ', 1)[1]} | {r['generator']} | {t['rps']:.0f} | {fv['rps']:.0f} | {r['bound_ratio']:.2f} "
                      f"| {r['bound_cpu_ratio']:.2f} | {t['p99_ms']:.2f} ({fv['p99_ms']:.2f}) |")


if __name__ == "__main__":
    main()
