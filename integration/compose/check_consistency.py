"""Consistency checks of the compose lab (run by integration/compose/validate).

    check_consistency.py TDC_MILTER_BIN

Catches drift between the files that must agree, none of which Docker can check
here (CI has no Docker engine):

* tdc-milter.yaml passes `tdc-milter check-config`. That command reads
  delivery.tls.ca_file, which in the lab is /certs/ca.crt inside the container (made
  at start by the certs service), so it is checked as a temporary copy whose ca_file
  line, and only that line, names a CA made just now by the same postfix/make-certs
  script with the same arguments as the certs service. Line numbers in errors are
  those of tdc-milter.yaml. The effective settings come from `tdc-milter show-config`
  of that copy, so the checks below see what the daemon would use.
* postfix/main.cf: smtpd_milters names the tdc-milter service and the port of its
  milter.listen, with default_action=accept; relayhost names the sink service.
* The intake: delivery.route names the Mailpit service and its SMTP port; Mailpit
  requires STARTTLS with a certificate from the certs volume that tdc-milter trusts
  through ca_file; the certificate verifies against the CA for the route's host.
* compose.yaml: build contexts and Dockerfiles exist, the settings file is mounted
  where the image's ENTRYPOINT reads it, the milter port is EXPOSEd, published ports
  match their listeners, every service_healthy dependency has a healthcheck.

Needs ruamel.yaml (installed with check-jsonschema) and openssl.
"""

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
COMPOSE = HERE / "compose.yaml"
SETTINGS = HERE / "tdc-milter.yaml"
MAIN_CF = HERE / "postfix" / "main.cf"
MAKE_CERTS = HERE / "postfix" / "make-certs"
ROOT_DOCKERFILE = REPO / "Dockerfile"

MILTER_SERVICE = "tdc-milter"
INTAKE_SERVICE = "mailpit"
CERTS_SERVICE = "certs"
SINK_SERVICE = "sink"
POSTFIX_SERVICE = "postfix"
SETTINGS_IN_CONTAINER = "/etc/tdc-milter/tdc-milter.yaml"
MAILPIT_SMTP_DEFAULT = "[::]:1025"

failures = []


def fail(message):
    failures.append(message)


def rel(path):
    return os.path.relpath(path, Path.cwd())


def host_port(text, what):
    """Splits HOST:PORT (HOST may be [v6] or empty); None after a failure."""
    m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d+)", text)
    if not m:
        fail("%s: %r is not HOST:PORT" % (what, text))
        return None
    return m.group(1), int(m.group(2))


def volume_mounts(service):
    """{target: (source, read_only)} of a service's short-syntax volumes."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts[entry["target"]] = (entry.get("source"), bool(entry.get("read_only")))
            continue
        parts = entry.split(":")
        if len(parts) == 1:
            mounts[parts[0]] = (None, False)
        else:
            mounts[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return mounts


def mount_of(service, path):
    """(source, target) of the mount that holds path in a service, or None."""
    best = None
    for target, (source, _) in volume_mounts(service).items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (source, target)
    return best


def published(service):
    """{container port: host binding} of a service's short-syntax ports."""
    result = {}
    for entry in service.get("ports") or []:
        text = str(entry)
        container = text.rsplit(":", 1)[-1].split("/")[0]
        result[int(container)] = text
    return result


def command_list(value):
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def effective_settings(binary, compose, tmp):
    """Runs check-config and show-config on a copy of tdc-milter.yaml whose ca_file
    names a CA made by make-certs; returns ({key: value}, make-certs directory)."""
    certs = compose["services"].get(CERTS_SERVICE) or {}
    args = command_list(certs.get("command"))
    if len(args) < 3 or Path(args[0]).name != "make-certs":
        fail("compose.yaml: service %s must run `make-certs DIR HOST...`, not %r" % (CERTS_SERVICE, args))
        return None, None
    cert_dir = Path(tmp) / "certs"
    result = subprocess.run([str(MAKE_CERTS), str(cert_dir)] + args[2:],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        fail("postfix/make-certs %s exited %d:\n%s" % (" ".join(args[2:]), result.returncode, result.stdout))
        return None, None
    container_cert_dir = args[1]

    # Rewrite the ca_file line only, so that line numbers stay those of the original.
    lines = SETTINGS.read_text().splitlines(keepends=True)
    rewritten = 0
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*ca_file:\s*)(\S+)(\s*(#.*)?)$", line.rstrip("\n"))
        if m and m.group(2).strip("\"'").startswith(container_cert_dir.rstrip("/") + "/"):
            name = m.group(2).strip("\"'")[len(container_cert_dir.rstrip("/")) + 1:]
            lines[i] = "%s\"%s\"%s\n" % (m.group(1), cert_dir / name, m.group(3))
            rewritten += 1
    if rewritten != 1:
        fail("tdc-milter.yaml: expected one `ca_file:` line under %s (the certs volume), found %d"
             % (container_cert_dir, rewritten))
        return None, None
    copy = Path(tmp) / "tdc-milter.yaml"
    copy.write_text("".join(lines))

    check = subprocess.run([binary, "-c", str(copy), "check-config"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check.returncode != 0:
        fail("tdc-milter check-config failed (a copy with ca_file pointing at a fresh test CA;"
             " line numbers are those of integration/compose/tdc-milter.yaml):\n"
             + check.stdout.replace(str(copy), "tdc-milter.yaml"))
        return None, None
    print("  tdc-milter check-config: %s" % check.stdout.strip().replace(str(copy), "tdc-milter.yaml"))

    show = subprocess.run([binary, "-c", str(copy), "show-config"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if show.returncode != 0:
        fail("tdc-milter show-config exited %d:\n%s" % (show.returncode, show.stdout))
        return None, None
    settings = {}
    for line in show.stdout.splitlines():
        m = re.match(r"^([a-z_.]+) = (.*?)\s+# \w+$", line)
        if m:
            settings[m.group(1)] = m.group(2)
    return settings, (cert_dir, container_cert_dir)


def setting(settings, key):
    if key not in settings:
        fail("tdc-milter show-config has no line for %s (has its layout changed?)" % key)
        return None
    return settings[key]


def main_cf_parameters():
    """main.cf as {name: value}, with continuation lines joined."""
    params = {}
    current = None
    for line in MAIN_CF.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and current:
            params[current] += " " + line.strip()
            continue
        name, _, value = line.partition("=")
        current = name.strip()
        params[current] = value.strip()
    return params


def check_builds(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (HERE / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            fail("compose.yaml: service %s builds %s, which does not exist" % (name, rel(dockerfile)))


def check_healthchecks(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            continue
        for target, spec in depends.items():
            if target not in services:
                fail("compose.yaml: service %s depends on %s, which is not a service" % (name, target))
            elif (spec or {}).get("condition") == "service_healthy" and "healthcheck" not in services[target]:
                fail("compose.yaml: service %s waits for %s to be healthy, which has no healthcheck"
                     % (name, target))


def check_milter(compose, settings):
    services = compose["services"]
    milter = services.get(MILTER_SERVICE)
    if milter is None:
        fail("compose.yaml: no %s service" % MILTER_SERVICE)
        return
    listen = setting(settings, "milter.listen")
    if listen is None:
        return
    if not listen.startswith("inet:"):
        fail("tdc-milter.yaml: milter.listen is %s; Postfix in another container needs inet:" % listen)
        return
    parsed = host_port(listen[len("inet:"):], "tdc-milter.yaml milter.listen")
    if parsed is None:
        return
    listen_host, listen_port = parsed
    if listen_host.startswith("127.") or listen_host in ("::1", "localhost"):
        fail("tdc-milter.yaml: milter.listen %s is loopback, unreachable from the postfix container" % listen)

    params = main_cf_parameters()
    milters = params.get("smtpd_milters", "")
    found = re.findall(r"inet:([^\s,{}]+)", milters)
    ours = [m for m in found if m.rsplit(":", 1)[0] == MILTER_SERVICE]
    if len(ours) != 1:
        fail("postfix/main.cf: smtpd_milters = %s must name inet:%s:%d once"
             % (milters, MILTER_SERVICE, listen_port))
    else:
        host, port = ours[0].rsplit(":", 1)
        if int(port) != listen_port:
            fail("postfix/main.cf: smtpd_milters names %s:%s, but tdc-milter.yaml listens on port %d (%s)"
                 % (host, port, listen_port, listen))
        group = re.search(r"\{\s*inet:%s\s*,([^}]*)\}" % re.escape(ours[0]), milters)
        if not group or "default_action=accept" not in group.group(1).replace(" ", ""):
            fail("postfix/main.cf: tdc-milter needs its own default_action=accept: "
                 "{ inet:%s, default_action=accept }" % ours[0])
        if found[-1] != ours[0]:
            fail("postfix/main.cf: tdc-milter must be the last of smtpd_milters (%s)" % milters)
        print("  milter: postfix/main.cf smtpd_milters inet:%s = service %s, milter.listen %s"
              % (ours[0], MILTER_SERVICE, listen))
    if MILTER_SERVICE in params.get("non_smtpd_milters", ""):
        fail("postfix/main.cf: tdc-milter must not be in non_smtpd_milters")

    exposed = re.findall(r"^EXPOSE\s+(.*)$", ROOT_DOCKERFILE.read_text(), re.M)
    ports = {int(p.split("/")[0]) for line in exposed for p in line.split()}
    if listen_port not in ports:
        fail("Dockerfile: EXPOSE %s, but milter.listen uses port %d" % (sorted(ports), listen_port))

    mounts = volume_mounts(milter)
    if SETTINGS_IN_CONTAINER not in mounts or Path(mounts[SETTINGS_IN_CONTAINER][0] or "").name != SETTINGS.name:
        fail("compose.yaml: service %s must mount ./%s at %s" % (MILTER_SERVICE, SETTINGS.name, SETTINGS_IN_CONTAINER))
    if SETTINGS_IN_CONTAINER not in ROOT_DOCKERFILE.read_text():
        fail("Dockerfile: its ENTRYPOINT no longer reads %s, where compose.yaml mounts the settings"
             % SETTINGS_IN_CONTAINER)

    metrics = setting(settings, "metrics.listen")
    if metrics and metrics != "off":
        parsed = host_port(metrics, "tdc-milter.yaml metrics.listen")
        if parsed and parsed[1] in published(milter) and parsed[0].startswith("127."):
            fail("tdc-milter.yaml: metrics.listen %s is loopback, but compose.yaml publishes it" % metrics)
        if parsed and published(milter) and parsed[1] not in published(milter):
            fail("compose.yaml: %s publishes %s, but metrics.listen is %s"
                 % (MILTER_SERVICE, list(published(milter).values()), metrics))

    postfix = services.get(POSTFIX_SERVICE) or {}
    relay = params.get("relayhost", "")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", relay)
    if not m:
        fail("postfix/main.cf: relayhost = %s, expected [%s]:PORT" % (relay, SINK_SERVICE))
    else:
        sink = services.get(m.group(1))
        port = m.group(2) or "25"
        if sink is None:
            fail("postfix/main.cf: relayhost %s names no compose service" % relay)
        elif not any(arg.endswith(":" + port) for arg in command_list(sink.get("command"))):
            fail("postfix/main.cf: relayhost %s, but service %s does not listen on port %s: %s"
                 % (relay, m.group(1), port, command_list(sink.get("command"))))
        else:
            print("  next hop: postfix/main.cf relayhost %s = service %s" % (relay, m.group(1)))
    if not postfix:
        fail("compose.yaml: no %s service" % POSTFIX_SERVICE)


def check_intake(compose, settings, certs):
    services = compose["services"]
    route = setting(settings, "delivery.route")
    if route is None:
        return
    hosts = re.findall(r'"([^"]+)"', route)
    if route == "dns" or len(hosts) != 1:
        fail("tdc-milter.yaml: delivery.route is %s; the lab routes to one host, the %s service"
             % (route, INTAKE_SERVICE))
        return
    default_port = setting(settings, "delivery.port")
    host, _, port = hosts[0].rpartition(":")
    if not host:
        host, port = hosts[0], default_port
    intake = services.get(host)
    if intake is None:
        fail("tdc-milter.yaml: delivery.route %s names no compose service" % hosts[0])
        return
    if not str(intake.get("image", "")).startswith("axllent/mailpit"):
        fail("compose.yaml: service %s (the route's host) is not Mailpit: image %r" % (host, intake.get("image")))
    env = intake.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    bind = host_port(str(env.get("MP_SMTP_BIND_ADDR", MAILPIT_SMTP_DEFAULT)), "MP_SMTP_BIND_ADDR")
    if bind and str(bind[1]) != str(port):
        fail("tdc-milter.yaml: delivery.route %s, but Mailpit's SMTP port is %d (MP_SMTP_BIND_ADDR)"
             % (hosts[0], bind[1]))
    if str(env.get("MP_SMTP_REQUIRE_STARTTLS", "")).lower() not in ("true", "1", "yes"):
        fail("compose.yaml: %s must set MP_SMTP_REQUIRE_STARTTLS (the intake insists on STARTTLS)" % host)
    if setting(settings, "delivery.tls.verify") != "true":
        fail("tdc-milter.yaml: delivery.tls.verify must stay true in the lab")

    if certs is None:
        return
    cert_dir, container_cert_dir = certs
    cert_volume = mount_of(services[CERTS_SERVICE], container_cert_dir)
    milter_ca = mount_of(services.get(MILTER_SERVICE) or {}, container_cert_dir + "/ca.crt")
    if cert_volume is None or milter_ca is None or milter_ca[0] != cert_volume[0]:
        fail("compose.yaml: %s must mount the volume that %s writes (%s) at %s"
             % (MILTER_SERVICE, CERTS_SERVICE, cert_volume, container_cert_dir))
    for var, name in (("MP_SMTP_TLS_CERT", "intake.crt"), ("MP_SMTP_TLS_KEY", "intake.key")):
        path = str(env.get(var, ""))
        mount = mount_of(intake, path)
        if mount is None or cert_volume is None or mount[0] != cert_volume[0] \
                or path[len(mount[1].rstrip("/")) + 1:] != name:
            fail("compose.yaml: %s %s=%r is not %s in the %s volume" % (host, var, path, name, CERTS_SERVICE))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(cert_dir / "ca.crt"),
                             "-verify_hostname", host, str(cert_dir / "intake.crt")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if verify.returncode != 0:
        fail("the certificate made by the %s service does not verify for %s:\n%s"
             % (CERTS_SERVICE, host, verify.stdout))
        return
    print("  intake: delivery.route %s = service %s (Mailpit, SMTP port %s, STARTTLS required);"
          " its certificate verifies for %s against ca_file" % (hosts[0], host, port, host))


def main():
    binary = sys.argv[1]
    with COMPOSE.open() as f:
        compose = YAML(typ="safe").load(f)
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        print("compose.yaml has no services", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tdc-compose-validate.") as tmp:
        settings, certs = effective_settings(binary, compose, tmp)
        check_builds(compose)
        check_healthchecks(compose)
        if settings is not None:
            check_milter(compose, settings)
            check_intake(compose, settings, certs)
    for message in failures:
        print("FAIL: " + message, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
