"""What the API streams or holds open on its event loop: Server-Sent Events of a job, long
polls woken by the ``finished`` channel, and the preview flag of a watched job."""
