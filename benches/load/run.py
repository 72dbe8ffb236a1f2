#!/usr/bin/env python3
"""Load harness: tokenhook against the floor server, in the same run, alternately.

Usage (from the repository root):  python3 benches/load/run.py [--seconds 8] [--out benches/load/results.json]

It installs its load generator itself (oha, from crates.io, with cargo install), builds
tokenhook and the floor server in release mode, pins each server to core 0 and oha to
core 1, and for every scenario runs the floor server, then tokenhook, with the same oha
settings. Results: a Markdown table on stdout and JSON in --out.
"""
import argparse, base64, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(ROOT, "target", "release")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_oha():
    found = shutil.which("oha") or (os.path.exists(os.path.expanduser("~/.cargo/bin/oha")) and os.path.expanduser("~/.cargo/bin/oha"))
    if found:
        return found
    print("installing oha from crates.io (cargo install oha --locked)…", file=sys.stderr)
    sh("cargo", "install", "oha", "--locked")
    return shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")


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


def probe(port, path, body, headers):
    """One request before the load: the scenario must be answering what it claims to measure."""
    import http.client, ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    hdrs = {"Content-Type": "application/json"}
    for h in headers:
        k, v = h.split(": ", 1)
        hdrs[k] = v
    c.request("POST", path, body=body, headers=hdrs)
    r = c.getresponse()
    return r.status, r.read().decode()


def run_oha(oha, url, body, seconds, conns, http2, keepalive, headers):
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
        "p50_ms": pct.get("p50", 0) * 1000,
        "p99_ms": pct.get("p99", 0) * 1000,
        "p999_ms": pct.get("p99.9", 0) * 1000,
        "status": codes,
    }


class Setup:
    """Release binaries, a dev directory made by `tokenhook dev`, JWT material, and config writing."""

    def __init__(self):
        ensure_cryptography()
        sh("cargo", "build", "--release", "--quiet", "--bin", "tokenhook", "--example", "floor", cwd=ROOT)
        self.tokenhook, self.floor = os.path.join(TARGET, "tokenhook"), os.path.join(TARGET, "examples", "floor")
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

    def config(self, name, cache=True, jwt=False, mint=False):
        port = free_port()
        lines = [
            "[server]", f'listen = "127.0.0.1:{port}"', 'cert_file = "server.crt"', 'key_file = "server.key"',
            "[cache]", f"enabled = {'true' if cache else 'false'}",
            "[log]", 'level = "warn"',
        ]
        if mint:
            lines += ["[mint]", f'issuer = "https://127.0.0.1:{port}"', 'signing_key_file = "sa-signing.key"',
                      "[[mint.service_accounts]]", 'namespace = "default"', 'name = "default"',
                      "[[mint.policy]]", 'users = ["alice"]', 'namespaces = ["*"]', 'service_accounts = ["*"]', 'audiences = ["*"]']
        lines += ["[[verifiers]]", 'type = "static"', 'file = "tokens.csv"']
        if jwt:
            lines += ["[[verifiers]]", 'type = "jwt"', 'jwks_file = "bench-jwks.json"', "[verifiers.issuer]",
                      f'url = "{self.issuer}"', 'audiences = ["bench"]', "[verifiers.claimMappings.username]", 'claim = "sub"', 'prefix = ""']
        path = os.path.join(self.dev, f"{name}.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path, port


def review(tok):
    return json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": tok}})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "load", "results.json"))
    a = ap.parse_args()
    oha = ensure_oha()
    st = Setup()
    tokenhook, floor, dev, alice, jwts, config = st.tokenhook, st.floor, st.dev, st.alice, st.jwts, st.config
    work = st.work

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

    results = []
    for i, (name, cfg, body, conns, h2, keepalive, path, headers) in enumerate(scenarios):
        row = {"scenario": name, "connections": conns, "protocol": "h2" if h2 else "http/1.1", "keepalive": keepalive}
        cfg = dict(cfg)
        alg = cfg.pop("alg", None)
        # JWT misses also run the floor plus the raw aws-lc-rs verify: the target's bound,
        # 1 / (floor cost + raw verify cost), measured in one server.
        servers = ("floor", "floor_verify", "tokenhook") if alg else ("floor", "tokenhook")
        # The floor answers with the very status tokenhook gives for this body, so both write
        # the same response bytes.
        status = st.status_file(f"bench{i}", cfg, body) if "tokenreviews" in path else None
        for who in servers:
            if who.startswith("floor"):
                port = free_port()
                srv = Server(st.floor_argv(port, alg if who == "floor_verify" else None, status), port)
            else:
                cfg_path, port = config(f"bench{i}", **cfg)
                srv = Server([tokenhook, "serve", "--config", cfg_path], port)
            try:
                code, text = probe(port, path, body, headers)
                if code not in (200, 201) or ("TokenReview" in text and '"authenticated":true' not in text):
                    sys.exit(f"{name}: {who} answered {code} {text[:300]}: misconfigured, not measured")
                r = run_oha(oha, f"https://127.0.0.1:{port}{path}", body, a.seconds, conns, h2, keepalive, headers)
            finally:
                r_rss = srv.stop()
            r["peak_rss_mib"] = round(r_rss / 1024, 1)
            r["ready_ms"] = round(srv.ready_ms, 1)
            row[who] = r
        for who in servers:
            bad = {c: n for c, n in row[who]["status"].items() if not c.startswith("2")}
            if bad:
                sys.exit(f"{name}: {who} answered {bad}: the scenario is misconfigured, not measured")
        row["throughput_ratio"] = row["tokenhook"]["rps"] / row["floor"]["rps"]
        row["p99_ratio"] = row["tokenhook"]["p99_ms"] / max(row["floor"]["p99_ms"], 1e-9)
        if alg:
            row["bound_ratio"] = row["tokenhook"]["rps"] / row["floor_verify"]["rps"]
        results.append(row)
        extra = f", floor+verify {row['floor_verify']['rps']:.0f}/s ratio {row['bound_ratio']:.2f}" if alg else ""
        print(f"{name} c={conns} {row['protocol']}: tokenhook {row['tokenhook']['rps']:.0f}/s floor {row['floor']['rps']:.0f}/s ratio {row['throughput_ratio']:.2f}{extra}", file=sys.stderr)

    meta = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "seconds_per_run": a.seconds,
            "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")}
    with open(a.out, "w") as f:
        json.dump({"machine": meta, "results": results}, f, indent=2)
    print(f"| scenario | conns | proto | tokenhook req/s | floor req/s | ratio | p50 ms | p99 ms (floor) | p999 ms | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t, fl = r["tokenhook"], r["floor"]
        print(f"| {r['scenario']} | {r['connections']} | {r['protocol']}{'' if r['keepalive'] else ', no keep-alive'} | {t['rps']:.0f} | {fl['rps']:.0f} | {r['throughput_ratio']:.2f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} ({fl['p99_ms']:.2f}) | {t['p999_ms']:.2f} | {t['peak_rss_mib']} |")
    print()
    print("| JWT cache miss | tokenhook req/s | floor + raw verify req/s | ratio | p99 ms (floor + raw verify) |")
    print("|---|---|---|---|---|")
    for r in results:
        if "bound_ratio" in r:
            t, fv = r["tokenhook"], r["floor_verify"]
            print(f"| {r['scenario'].rsplit(' ', 1)[1]} | {t['rps']:.0f} | {fv['rps']:.0f} | {r['bound_ratio']:.2f} | {t['p99_ms']:.2f} ({fv['p99_ms']:.2f}) |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
