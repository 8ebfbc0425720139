"""What a person reads about a job: text tables, sentences, plots and report.html."""
