"""nbgrader configuration: run every nbgrader command from the repository root.

    nbgrader generate_assignment 01_multi_sample_dropout --force   # solutions/ -> exercises/
    nbgrader autograde 01_multi_sample_dropout                       # submitted/<student>/...
    nbgrader generate_feedback 01_multi_sample_dropout
    nbgrader export                                                  # grades.csv
"""

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"   # kept out of git (.gitignore)
c.CourseDirectory.course_id = "layerwise"

# torch code needs more than nbgrader's default 30 s per cell. An answer that never returns is
# also stopped earlier, by the time limit in layerwise.grading, so it costs only its own points.
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True

# Students see a clear stub.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
