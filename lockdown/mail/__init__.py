"""Mail: the Postfix log parser, the incident report and the audit checks."""
