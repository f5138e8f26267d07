"""The bottom layer under storage: settings, logging, the clock, fault points, metric primitives."""
