"""What the tests share: real servers, services and models to run against."""
