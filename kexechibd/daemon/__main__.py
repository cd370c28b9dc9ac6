import sys

from kexechibd.daemon.main import main

sys.exit(main())
