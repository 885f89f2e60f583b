"""Reading a trained layer: probing, steering, analysis, directions and dashboards."""
