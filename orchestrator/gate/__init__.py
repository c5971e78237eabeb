"""The model gate: rules that judge a candidate model against thresholds and the deployed one."""
