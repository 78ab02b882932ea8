import sys

from client_image.main import main

sys.exit(main())
