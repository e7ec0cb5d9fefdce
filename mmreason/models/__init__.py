"""Model families: plain nn.Modules that load and run without a Trainer."""
