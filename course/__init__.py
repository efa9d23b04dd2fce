"""Instructor tooling: the handout generator and the autograder. Never handed to students."""
