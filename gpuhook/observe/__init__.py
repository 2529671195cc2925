"""What an operator asks about a node: `explain` (the decision log, read back) and `doctor`
(the node's readiness, check by check). Both only read."""
