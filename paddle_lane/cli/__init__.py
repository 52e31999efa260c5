"""The command line: the parser and one handler per verb (main), the inference verbs, demo and doctor."""
