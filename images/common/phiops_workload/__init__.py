"""What every phiops workload image shares: its config file in, its result out."""
