"""Server side: the round loop (the only place rounds are driven) and its records."""
