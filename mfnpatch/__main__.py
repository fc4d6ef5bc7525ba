from mfnpatch.cli import main

main()
