"""What the daemon does on behalf of a request or a supervisor, with the stores it is given:
a callback's effect (callbacks), the pull agent's claim/report/refused (agent), submitting a
claimed attempt (launch). The listener's routers and the supervisors call these."""
