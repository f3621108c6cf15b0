"""The Debian package, as an admin meets it: build it with cargo-deb
(integration/build-deb), install it with apt-get, check what it put where (owner,
mode, the conffile, the account, Postfix untouched), check the installed settings
file, run the installed daemon the way its systemd unit would (no systemd runs here:
the unit's ExecStart, as user tdc-milter) and send a message through Postfix to it,
then upgrade over an edited conffile, which must be kept, and purge.

The tests run in file order and share the installed package; the module installs
it at the start and purges it at the end. Needs root; changes the machine's package
set for the duration (the tdc-milter account stays after purge, as Debian's do).
"""

import grp
import hashlib
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import tomllib
from pathlib import Path

import pytest

import stack as st

PACKAGE = "tdc-milter"
CONF = Path("/etc/tdc-milter/tdc-milter.yaml")
UNIT = Path("/usr/lib/systemd/system/tdc-milter.service")
BINARY = Path("/usr/sbin/tdc-milter")
SPOOL = Path("/var/spool/tdc-milter")
RUN_DIR = Path("/run/tdc-milter")
DOC = Path("/usr/share/doc/tdc-milter")
POSTFIX_ETC = Path("/etc/postfix")
VERSION = tomllib.loads((st.REPO / "Cargo.toml").read_text())["package"]["version"]
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def sh(argv, timeout=600, check=True, **kwargs):
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)
    if check:
        assert done.returncode == 0, "%s exited %d:\n%s\n%s" % (
            " ".join(map(str, argv)), done.returncode, done.stdout, done.stderr)
    return done


def installed_version():
    done = sh(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", PACKAGE], check=False)
    if done.returncode != 0 or not done.stdout.startswith("ii"):
        return None
    return done.stdout[2:].strip()


def purge():
    return sh(["apt-get", "purge", "-y", PACKAGE], env=APT_ENV)


def digest(path):
    """One hash of a file, or of every file under a directory (names included);
    None if there is nothing."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in [path, *path.rglob("*")] if p.is_file()):
        h.update(str(f).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class SyslogCapture:
    """A /dev/log for the daemon's syslog lines, where the machine has none (CI has
    no syslog daemon). Where a syslog daemon owns /dev/log, lines go there instead
    and `lines` stays None."""

    PATH = "/dev/log"

    def __init__(self):
        self.lines = None
        self.sock = None
        if os.path.exists(self.PATH):
            return
        self.lines = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.PATH)
        os.chmod(self.PATH, 0o666)  # the daemon runs as tdc-milter
        self.thread = threading.Thread(target=self.receive, daemon=True)
        self.thread.start()

    def receive(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.append(data.decode("utf-8", "replace"))

    def close(self):
        if self.sock is not None:
            self.sock.close()
            os.unlink(self.PATH)


@pytest.fixture(scope="module")
def debs():
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    if installed_version() is not None:
        purge()
    built = sh([st.HERE / "build-deb", "--upgrade-too"], cwd=st.REPO, timeout=1800)
    paths = [st.REPO / line for line in built.stdout.split()]
    assert len(paths) == 2 and all(p.is_file() for p in paths), built.stdout
    yield paths
    if installed_version() is not None:
        purge()


@pytest.fixture(scope="module")
def install(debs):
    postfix_etc_before = digest(POSTFIX_ETC)
    done = sh(["apt-get", "install", "-y", debs[0]], env=APT_ENV)
    return {"output": done.stdout + done.stderr, "postfix_etc_before": postfix_etc_before}


def test_control_fields_and_conffiles(debs):
    for deb, revision in zip(debs, ("1", "2")):
        fields = sh(["dpkg-deb", "-f", deb, "Package", "Version", "Section", "Depends"]).stdout
        assert "Package: tdc-milter\n" in fields
        assert "Version: %s-%s\n" % (VERSION, revision) in fields
        assert "Section: mail\n" in fields
        assert "libc6" in fields and "systemd-sysusers" in fields
        with tempfile.TemporaryDirectory() as control:
            sh(["dpkg-deb", "-e", deb, control])
            assert Path(control, "conffiles").read_text().split() == [str(CONF)]
            for script in ("postinst", "postrm", "prerm"):
                mode = Path(control, script).stat().st_mode
                assert mode & 0o755 == 0o755, script


def test_install_tells_what_to_add_and_leaves_postfix_alone(install):
    out = install["output"]
    assert "smtpd_milters = <your milters>, { inet:127.0.0.1:8895, default_action=accept }" in out
    assert "set intake_address" in out
    assert digest(POSTFIX_ETC) == install["postfix_etc_before"]
    assert installed_version() == "%s-1" % VERSION


def assert_path(path, kind, mode, owner="root", group="root"):
    info = path.lstat()
    assert kind(info.st_mode), "%s is not the expected kind of file" % path
    assert stat.S_IMODE(info.st_mode) == mode, "%s has mode %o, not %o" % (path, stat.S_IMODE(info.st_mode), mode)
    assert pwd.getpwuid(info.st_uid).pw_name == owner, path
    assert grp.getgrgid(info.st_gid).gr_name == group, path


def test_files_owners_and_modes(install):
    assert_path(BINARY, stat.S_ISREG, 0o755)
    assert_path(CONF, stat.S_ISREG, 0o644)
    assert CONF.read_bytes() == (st.REPO / "milter-config" / "tdc-milter.yaml").read_bytes()
    assert_path(UNIT, stat.S_ISREG, 0o644)
    assert UNIT.read_bytes() == (st.REPO / "packaging" / "debian" / "tdc-milter.service").read_bytes()
    for path in ("/usr/lib/sysusers.d/tdc-milter.conf", "/usr/lib/tmpfiles.d/tdc-milter.conf",
                 "/usr/share/man/man8/tdc-milter.8.gz", "/usr/share/man/man5/tdc-milter.yaml.5.gz",
                 DOC / "README.md", DOC / "copyright", DOC / "LOGGING.md",
                 DOC / "examples" / "tdc-milter.yaml", DOC / "examples" / "postfix-main.cf",
                 DOC / "examples" / "sendmail.mc"):
        assert_path(Path(path), stat.S_ISREG, 0o644)
    assert_path(SPOOL, stat.S_ISDIR, 0o750, "tdc-milter", "tdc-milter")
    assert_path(RUN_DIR, stat.S_ISDIR, 0o750, "tdc-milter", "tdc-milter")
    # The unit is enabled for when systemd runs the machine.
    assert Path("/etc/systemd/system/multi-user.target.wants/tdc-milter.service").is_symlink()
    conffiles = sh(["dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE]).stdout
    assert str(CONF) in conffiles


def test_system_account(install):
    user = pwd.getpwnam("tdc-milter")
    assert user.pw_uid < 1000, "not a system account"
    assert user.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert user.pw_dir == str(SPOOL)
    assert grp.getgrgid(user.pw_gid).gr_name == "tdc-milter"


def test_unit_verifies(install):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing, though the package depends on systemd-sysusers")
    done = sh(["systemd-analyze", "verify", UNIT], check=False)
    # verify also reports on units this one names (postfix.service may be absent);
    # only complaints about our own unit count.
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "tdc-milter.service" in line]
    assert not ours, "\n".join(ours)


def test_man_pages_render(install):
    for page in ("/usr/share/man/man8/tdc-milter.8.gz", "/usr/share/man/man5/tdc-milter.yaml.5.gz"):
        done = sh(["sh", "-c", "zcat %s | groff -man -Tutf8 -ww -z" % shlex.quote(page)], check=False)
        if done.returncode == 127:
            pytest.skip("groff is not installed")
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_installed_settings_file_checks(install):
    done = sh([BINARY, "-c", CONF, "check-config"])
    assert done.stdout.strip() == "%s: settings are valid" % CONF, done.stdout


def unit_exec_start():
    for line in UNIT.read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart="):])
    raise AssertionError("no ExecStart= in %s" % UNIT)


@pytest.fixture(scope="module")
def syslog():
    capture = SyslogCapture()
    yield capture
    capture.close()


@pytest.fixture(scope="module")
def edited_conffile(install, syslog, request):
    """The installed daemon, started as its unit would, behind a hermetic Postfix;
    the conffile edited to journal to the stack's intake. Yields (stack, text)."""
    base = tempfile.mkdtemp(prefix="tdc-milter-pkg-")
    os.chmod(base, 0o755)
    stack = st.Stack(base, milter_bin=BINARY)
    try:
        stack.prepare()
        # The stack's settings, with the package's own spool, control socket and
        # metrics defaults instead of the stack's private ones.
        text = stack.settings_file.read_text().replace(st.OWN_STATE_SETTINGS, "")
        assert text != stack.settings_file.read_text()
        text = "# edited by the admin (integration/test_package.py)\n" + text
        CONF.write_text(text)
        sh([BINARY, "-c", CONF, "check-config"])
        stack.start_relay_sink()
        stack.start_intake_sink()
        argv = unit_exec_start()
        assert argv[0] == str(BINARY) and argv[-2:] == ["--log", "syslog"], argv
        # User=/Group= of the unit, and nothing else: setpriv execs, so the pid is the
        # daemon's own.
        stack.spawn("tdc-milter", ["setpriv", "--reuid=tdc-milter", "--regid=tdc-milter", "--init-groups",
                                   "--", *argv], stack.milter_log)
        stack.wait_listening(stack.ports["milter"], "tdc-milter")
        stack.start_postfix()
    except BaseException:
        stack.stop_all()
        raise
    yield stack, text
    stack.stop_all()
    if request.session.testsfailed:
        print("\npackage test files kept in %s" % base)
    else:
        shutil.rmtree(base, ignore_errors=True)


def test_installed_daemon_journals_through_postfix(edited_conffile, syslog):
    stack, _ = edited_conffile
    pid = stack.state["processes"]["tdc-milter"]["pid"]
    status = Path("/proc/%d/status" % pid).read_text()
    uid = pwd.getpwnam("tdc-milter").pw_uid
    assert "\nUid:\t%d\t%d\t%d\t%d\n" % (uid, uid, uid, uid) in status

    message = (b"From: a@example.net\r\nTo: alice@example.com\r\nSubject: package test\r\n"
               b"Message-ID: <package.%d@example.net>\r\n\r\nhello from the package test\r\n" % os.getpid())
    queue_id = stack.send("a@example.net", ["alice@example.com"], message)
    st.poll(lambda: queue_id in stack.relayed(), 60, what="the original at smtp-sink")
    st.poll(lambda: len(stack.journals()) == 1, 60, what="the journal at the intake")
    _, envelope, raw = stack.journals()[0]
    assert envelope["rcpt_tos"] == [st.INTAKE_ADDRESS]
    assert b"hello from the package test" in raw

    # The spool is the package's, written by the daemon's account.
    for path in SPOOL.rglob("*"):
        assert path.stat().st_uid == uid, path
    # root (and the tdc-milter group) reach the control socket in /run/tdc-milter.
    sock = RUN_DIR / "control.sock"
    assert_path(sock, stat.S_ISSOCK, 0o660, "tdc-milter", "tdc-milter")
    status_out = sh([BINARY, "-c", CONF, "status"]).stdout
    assert "the.tdc.queue" in status_out or "queue" in status_out

    if syslog.lines is not None:
        st.poll(lambda: any("successfully delivered" in line for line in syslog.lines), 30,
                what="the delivery line in syslog")
        delivered = [line for line in syslog.lines if "successfully delivered" in line]
        assert delivered[0].startswith("<22>"), delivered[0]  # facility mail, severity info
        assert "TDC: MID 1 successfully delivered for scanning with Cisco Secure Email Threat Defense." \
            in delivered[0]


CHROOT = Path("/var/spool/postfix")
CHROOT_SOCKET_DIR = CHROOT / "tdc-milter"


def unit_values(key):
    return [line[len(key) + 1:] for line in UNIT.read_text().splitlines() if line.startswith(key + "=")]


def sandboxed(argv):
    """argv as the unit runs it, without systemd: ProtectSystem=strict (the root file
    system read-only) but for the unit's ReadWritePaths= (a leading "-": only if it
    exists) and its RuntimeDirectory, then User= and Group=."""
    writable = []
    for value in unit_values("ReadWritePaths"):
        optional = value.startswith("-")
        path = Path(value.lstrip("-"))
        if path.exists():
            writable.append(str(path))
        else:
            assert optional, "ReadWritePaths=%s does not exist" % value
    writable += ["/run/" + d for d in unit_values("RuntimeDirectory")]
    script = ('for p in "$@"; do [ "$p" = -- ] && break; mount --bind "$p" "$p"; shift; done; shift; '
              'mount -o remount,bind,ro / && exec setpriv --reuid=tdc-milter --regid=tdc-milter '
              '--init-groups -- "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            *writable, "--", *argv]


def test_unix_socket_in_debians_postfix_chroot_under_the_unit(edited_conffile):
    """README "A unix socket": the socket in /var/spool/postfix/tdc-milter, written
    under the unit's read-only file system, reached by Debian's chrooted smtpd as
    user postfix through the socket's group."""
    stack, text = edited_conffile
    stack.stop_postfix()
    stack.stop_milter()
    socket_path = CHROOT_SOCKET_DIR / "milter.sock"
    main_cf = stack.postfix_etc / "main.cf"
    master_cf = stack.postfix_etc / "master.cf"
    main_before, master_before = main_cf.read_text(), master_cf.read_text()
    etc = str(stack.postfix_etc)
    try:
        sh(["install", "-d", "-o", "tdc-milter", "-g", "tdc-milter", "-m", "0750", CHROOT_SOCKET_DIR])
        sh(["adduser", "--quiet", "postfix", "tdc-milter"])
        listen = "  listen: \"inet:127.0.0.1:%d\"" % stack.ports["milter"]
        assert listen in text, text
        CONF.write_text(text.replace(listen, "  listen: \"unix:%s\"" % socket_path))
        sh([BINARY, "-c", CONF, "check-config"])
        stack.spawn("tdc-milter", sandboxed(unit_exec_start()), stack.milter_log)

        def answering():
            assert stack.alive("tdc-milter"), st.tail(stack.milter_log)
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(socket_path))
                return True
            except OSError:
                return False
            finally:
                probe.close()

        st.poll(answering, 20, what="tdc-milter on its unix socket")
        assert_path(socket_path, stat.S_ISSOCK, 0o660, "tdc-milter", "tdc-milter")
        # The sandbox is real: the spool is writable, the rest of the system is not.
        assert "Read-only file system" in sh(
            sandboxed(["touch", "/var/spool/not-writable"]), check=False).stderr

        # Debian's chroot: queue_directory /var/spool/postfix, smtpd chrooted into it.
        main_cf.write_text(
            re.sub(r"(?m)^queue_directory = .*$", "queue_directory = %s" % CHROOT, main_before)
            .replace("smtpd_milters = { inet:127.0.0.1:%d, default_action=accept }" % stack.ports["milter"],
                     "smtpd_milters = { unix:/tdc-milter/milter.sock, default_action=accept }"))
        assert "unix:/tdc-milter/milter.sock" in main_cf.read_text()
        smtpd = "127.0.0.1:%d inet n - n - - smtpd" % stack.ports["smtpd"]
        assert smtpd in master_before
        master_cf.write_text(master_before.replace(smtpd, "127.0.0.1:%d inet n - y - - smtpd" % stack.ports["smtpd"]))
        sh(["postfix", "-c", etc, "start"])
        stack.wait_listening(stack.ports["smtpd"], None)

        before = len(stack.journals())
        message = (b"From: a@example.net\r\nTo: alice@example.com\r\nSubject: chroot test\r\n"
                   b"Message-ID: <chroot.%d@example.net>\r\n\r\nthrough the chroot\r\n" % os.getpid())
        queue_id = stack.send("a@example.net", ["alice@example.com"], message)
        st.poll(lambda: queue_id in stack.relayed(), 60, what="the original at smtp-sink")
        st.poll(lambda: len(stack.journals()) == before + 1, 60, what="the journal at the intake")
        assert b"through the chroot" in stack.journals()[-1][2]
        maillog = stack.maillog.read_text(errors="replace")
        assert "Milter service unix:" not in maillog, maillog
    finally:
        sh(["postfix", "-c", etc, "stop"], check=False)
        stack.stop_milter()
        main_cf.write_text(main_before)
        master_cf.write_text(master_before)
        CONF.write_text(text)
        sh(["gpasswd", "-d", "postfix", "tdc-milter"], check=False)
        shutil.rmtree(CHROOT_SOCKET_DIR, ignore_errors=True)


def test_upgrade_keeps_the_edited_conffile(debs, edited_conffile):
    stack, text = edited_conffile
    stack.stop_milter()
    done = sh(["apt-get", "install", "-y", debs[1]], env=APT_ENV)
    assert installed_version() == "%s-2" % VERSION
    assert CONF.read_text() == text, "the upgrade replaced the admin's settings file"
    assert "it journals nothing until you configure it" not in done.stdout, "first-install text on upgrade"
    assert_path(SPOOL, stat.S_ISDIR, 0o750, "tdc-milter", "tdc-milter")
    sh([BINARY, "-c", CONF, "check-config"])


def test_purge_removes_everything_but_the_account(debs, edited_conffile):
    purge()
    assert installed_version() is None
    for path in (BINARY, CONF, CONF.parent, UNIT, SPOOL, RUN_DIR, DOC,
                 Path("/etc/systemd/system/multi-user.target.wants/tdc-milter.service")):
        assert not os.path.lexists(path), "%s is still there after purge" % path
    pwd.getpwnam("tdc-milter")  # system accounts stay (Debian's rule)
