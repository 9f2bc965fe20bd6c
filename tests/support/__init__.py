"""What tests share that is not a fixture: the session's broker place, samples, fault tools."""
