"""Log sources: nginx's access and error logs and uWSGI's log, read and reduced at the source.

(Package docstring completed with the API once the reducers exist.)
"""
