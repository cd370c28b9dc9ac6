# What the running kernel offers kexechibd, as the lab's probe tests read it
# (tests/lab/test_probe.py): the Linux backend's capability probe, the
# daemon's Support property through `kexechibctl status`, and with
# kexechib.lab.vectors=1 the conformance vectors (DESIGN §2) run on this
# kernel. Needs only the initramfs (a stock kernel has virtio and fw_cfg as
# modules): run it with kexechib.lab.run=/usr/lib/kexechib-lab/report.sh.
. /usr/lib/kexechib-lab/lab.sh

python3 - <<'PY' || { say "error=probe"; exit 1; }
import json
from kexechibd.kernel.linux import LinuxKernel

report = LinuxKernel().probe()
fields = ("kexec", "cap_sys_boot", "lockdown", "kexec_load_disabled", "kexec_jump", "staged_load")
record = {name: getattr(report, name) for name in fields}
record.update(missing=report.missing, notes=list(report.notes), can_jump=report.can_jump)
print("KEXECHIB-LAB probe " + json.dumps(record), flush=True)
PY
start_bus
start_daemon
kexechibctl status || { say "error=kexechibctl"; exit 1; }
say "status-done"
if [ "$(cmdline_value kexechib.lab.vectors)" = 1 ]; then
	cd /opt/kexechib || exit 1
	python3 -m tests.conformance.vectors >/tmp/vectors || { say "error=vectors"; exit 1; }
	sed 's/^/KEXECHIB-LAB vector /' /tmp/vectors
	say "vectors-done"
fi
