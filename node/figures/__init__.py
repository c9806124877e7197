"""Figures (绩效): running totals of calls served and made, kept in the audit journal's commit; the signed
daily reports a node publishes to its parent; the dashboard's sums over a subtree; the operator's alerts."""
