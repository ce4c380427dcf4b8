"""Mail: the Postfix log parser and the incident report (read by audit/, evidence/ and triggers/)."""
