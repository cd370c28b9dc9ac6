"""Sample /proc/self/mountinfo tables for the tests of kexechibd.mounts and of
the engine's checks.  Not a test module: pytest does not collect it."""

# What kexechib-resume.service sees early in a Debian boot (root `ro`), and
# the same system later, with a read-only bind mount as ProtectSystem= makes.
EARLY = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 1 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 1 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4010000k,mode=755
26 1 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=803000k
1 0 254:1 / / ro,relatime shared:1 - ext4 /dev/vda1 ro,errors=remount-ro
28 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
"""
LATER = EARLY.replace(
    "ro,relatime shared:1 - ext4 /dev/vda1 ro,", "rw,relatime shared:1 - ext4 /dev/vda1 rw,"
) + (
    "40 1 254:1 /var/lib /var/lib ro,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n"
    "41 1 254:17 / /home\\040dir rw,relatime shared:30 - xfs /dev/vdb1 rw,attr2\n"
)
