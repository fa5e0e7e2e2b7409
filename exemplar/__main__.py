from exemplar.app.cli import main

main()
