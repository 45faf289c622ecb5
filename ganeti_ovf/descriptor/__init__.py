"""The OVF descriptor: XML to model (reader) and model to XML (writer)."""
