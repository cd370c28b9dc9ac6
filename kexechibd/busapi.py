"""Where the daemon is on the bus: its well-known name, its object and its
interface.  Neutral ground, so kexechibctl finds the daemon without
importing it (imports flow from the daemon and the CLI down, never across)."""

BUS_NAME = "org.kexechib1"
OBJECT_PATH = "/org/kexechib1"
INTERFACE = "org.kexechib1.Manager"
