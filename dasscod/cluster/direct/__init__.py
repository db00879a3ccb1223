"""The "direct" scheduler: every job a detached background process on the daemon's machine.

The package: `scheduler` (submit, lookup, status, cancel), `folder` (a job's state folder and
what it says), `warm` (the daemon's side of the warm launcher), and the three programs that run
outside the daemon's interpreter: `wrapper.sh` (the detached job wrapper), `launch.sh` (starts
it in a session of its own) and `warm_server.py` (the warm launcher, standard library only).

There is no batch system to remember jobs for us, so each job keeps its state in a folder of
its own, ``<state_dir>/<job name>/``. The name is deterministic per attempt, so the folder is
how a restarted daemon finds the job again::

    spec.json      what was submitted, for operators (environment *names* only: values hold a token)
    wrapper.log    the wrapper's own messages (problems starting the job)
    started        when the wrapper started, epoch seconds (tells our wrapper from a reused pid)
    pid            the wrapper's pid -- the job id, and its session and process group -- or
                   "abandoned" when the daemon gave up a launch that never started
    stdout, stderr the job's output
    exit           the job's exit status, written atomically (exit.tmp, then a rename)
    cancelled      marker: cancel() was asked for

Crash safety. The exclusive creation of the folder is the record that the attempt was
submitted: whatever happens later, a second submit of the name never starts a second process.
A crash can still leave a folder without a running job (the daemon died between creating it
and launching). The wrapper therefore *claims* the folder by hard-linking its pid file into
place, and the daemon gives up a launch that never claimed it by linking an "abandoned" pid
file into the same place; link(2) fails when the name exists, so exactly one of the two wins.
A launch is thus either running or provably never going to run -- a wrapper that is merely
slow can never start a job the daemon has already reported as not started.

The daemon abandons a launch when submit's wrapper does not claim the folder in time (the
submission fails, retryably: nothing runs, a new attempt is safe), and when lookup or status
meets an unclaimed folder that this scheduler is not launching right now (its submitter has
crashed): the job is reported FAILED, so the watcher retries it as a new attempt under a
fresh name. Because lookup reports such folders, the store never gives their attempt back,
and a later submit of the same name means the store and the state folders disagree (or two
daemons share a state_dir): that submit abandons the folder and raises a non-retryable
SchedulerError, stopping the job for an operator instead of guessing.

Warm start. A pipeline job is `PYTHON -m dassco_hpc run MODULE`, and a fresh interpreter
spends ~70 ms importing the runner and its HTTP client before the module starts -- most of a
short job's overhead on the daemon's own machine. So a job whose command is `PYTHON -m M ...`
for a module M in `warm` is forked from a *warm launcher*: one Python per scheduler, started
on first use with the job's interpreter and environment, that has imported what M needs and
forks on request. The fork (warm_server.py) does what the shell wrapper does -- a session
of its own, the same claim by link(2), the same state files, the time limit with a kill
after `KILL_AFTER_S`, SIGTERM forwarded -- and then runs the module as `python -m` would, in
a child of its own process group. Its parent exits at once, so the job belongs to no
process of the daemon's: it survives the daemon and the launcher (which exits when the
daemon closes its pipe, or dies). Jobs with other commands take the shell wrapper, and so
does a job whenever the launcher fails (a launcher that cannot start is not tried again for
that interpreter and environment). One launcher at a time: a job with another interpreter or
`PYTHON*` environment replaces it. A launcher imports its modules once: a changed dassco_hpc
is picked up by the next daemon start.
"""

from dasscod.cluster.direct.scheduler import DirectScheduler

__all__ = ["DirectScheduler"]
