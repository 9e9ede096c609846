"""Market-data and order venues: the simulator (paper/demo), and later Kite and Fyers."""
