"""The bodies of the listener's requests and answers: the HTTP contract with `hpc/` (job
callbacks) and with the pull clusters' agents. Shared by the listener's routers, which parse
them, and the services, which act on them; imports neither."""
