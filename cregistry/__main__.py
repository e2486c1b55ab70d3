from cregistry.cli import main

main()
