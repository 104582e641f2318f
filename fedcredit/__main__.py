import sys

from fedcredit.cli import main

sys.exit(main())
