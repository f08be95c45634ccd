import sys

from keras_xception.cli import main

sys.exit(main())
