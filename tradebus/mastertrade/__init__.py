"""MasterTrade's domain: its six message formats, paper account, strategy state, trading rules, simulator."""
