"""kexechibctl: the command-line client of kexechibd."""
