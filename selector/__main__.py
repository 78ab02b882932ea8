import sys

from selector.main import main

sys.exit(main())
