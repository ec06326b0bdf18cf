/* The OHIF viewer's configuration (served as /app-config.js): one DICOMweb data source, the archive behind this
 * very origin. The web server in front of OHIF forwards /dicom-web and /wado to Orthanc with the Host header
 * unchanged (Orthanc builds its BulkDataURI links from it), so the browser needs no CORS and asks for the
 * archive's login itself. tests/test_viewer.py serves this same file to a real Chromium. */
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'liverseg',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'liverseg',
      configuration: {
        friendlyName: 'liverseg archive',
        name: 'liverseg',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        wadoUriRoot: '/wado',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
