FLASK_APP=manage
